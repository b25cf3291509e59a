"""GET /health, /metrics and /version: for orchestrators and scrapers, answered at once."""

from importlib.metadata import version

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.errors import APIError
from server.protocol import VersionResponse
from server.services import Shared

router = APIRouter()


@router.get("/health", responses={200: {"description": "serving"}, 503: {"description": "not"}})
async def health(s: Shared) -> Response:
    if s.state.draining:
        raise APIError(503, "the server is shutting down")
    try:
        await s.engine.check_health()
    except Exception:
        raise APIError(503, "the engine is not running") from None
    stalled, limit = s.engine.stalled_seconds(), s.settings.liveness_timeout
    if stalled > limit:
        raise APIError(
            503,
            f"the engine has held requests for {stalled:.0f} s without a step "
            f"(--liveness-timeout {limit:g})",
            code="engine_stalled",
        )
    return Response(status_code=200)


@router.get("/version", response_model=VersionResponse)
async def server_version() -> JSONResponse:
    import vllm

    return JSONResponse({"version": version("resonance-serve"), "vllm": vllm.__version__})


@router.get("/metrics", response_class=Response)
async def metrics(s: Shared) -> Response:
    return Response(generate_latest(s.metrics.registry), media_type=CONTENT_TYPE_LATEST)
