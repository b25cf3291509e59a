"""The FastAPI application: OpenAI routes, tokenizer routes, health, version and metrics."""

import time
from importlib.metadata import version
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from vllm.entrypoints.serve.utils.api_utils import with_cancellation
from vllm.sampling_params import RequestOutputKind

from server.admission import Admission
from server.engine import Engine
from server.errors import APIError, install_error_handlers
from server.middleware import Gatekeeper, ServerState, release_at_end
from server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from server.serving import Job, Serving
from server.settings import Settings

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def create_app(engine: Engine, settings: Settings, state: ServerState) -> FastAPI:
    serving = Serving(engine, settings.max_n, settings.request_timeout)
    info = engine.info
    max_prompt_tokens = settings.max_queued_prompt_tokens or 16 * info.max_model_len
    if max_prompt_tokens < info.max_model_len:
        raise ValueError(
            f"max_queued_prompt_tokens ({max_prompt_tokens}) must be at least max_model_len "
            f"({info.max_model_len}), or a longest prompt could never be admitted"
        )
    admission = Admission(settings.max_concurrent_requests, max_prompt_tokens)
    created = int(time.time())
    app = FastAPI(title="resonance-serve", version=version("resonance-serve"))
    install_error_handlers(app)
    app.add_middleware(
        Gatekeeper,
        state=state,
        counter=engine.metrics.requests,
        max_body_bytes=settings.max_request_body_bytes,
        probes_need_key=settings.api_key_for_probes,
    )

    async def run(raw_request: Request, job: Job, stream, whole) -> Response:
        """Hold an admission ticket until the HTTP exchange ends, however it ends."""
        ticket = admission.admit(job.prompt_tokens)
        release_at_end(raw_request.scope, ticket.release)
        if job.params.output_kind == RequestOutputKind.DELTA:
            return StreamingResponse(
                stream(job), media_type="text/event-stream", headers=SSE_HEADERS
            )
        try:
            return JSONResponse(await whole(job))
        finally:
            ticket.release()

    @app.post("/v1/completions")
    @with_cancellation
    async def completions(request: CompletionRequest, raw_request: Request) -> Response:
        job = await serving.completion_job(request)
        return await run(raw_request, job, serving.stream_completion, serving.complete)

    @app.post("/v1/chat/completions")
    @with_cancellation
    async def chat_completions(request: ChatCompletionRequest, raw_request: Request) -> Response:
        job = await serving.chat_job(request)
        return await run(raw_request, job, serving.stream_chat, serving.chat)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {
            "id": info.name,
            "object": "model",
            "created": created,
            "owned_by": "resonance-serve",
            "root": info.checkpoint,
            "max_model_len": info.max_model_len,
            "rope_parameters": info.rope,
        }
        return {"object": "list", "data": [card]}

    @app.post("/tokenize")
    async def tokenize(request: TokenizeRequest) -> dict[str, Any]:
        serving.check_model(request.model)
        tokens = engine.tokenizer.encode(
            request.prompt, add_special_tokens=request.add_special_tokens
        )
        return {"tokens": tokens, "count": len(tokens), "max_model_len": info.max_model_len}

    @app.post("/detokenize")
    async def detokenize(request: DetokenizeRequest) -> dict[str, str]:
        serving.check_model(request.model)
        if request.tokens and max(request.tokens) >= serving.vocab_size:
            raise APIError(400, "token id outside the vocabulary", param="tokens")
        return {"prompt": engine.tokenizer.decode(request.tokens)}

    @app.get("/health")
    async def health() -> Response:
        if state.draining:
            raise APIError(503, "the server is shutting down")
        try:
            await engine.check_health()
        except Exception:
            raise APIError(503, "the engine is not running") from None
        return Response(status_code=200)

    @app.get("/version")
    async def server_version() -> dict[str, str]:
        return {"version": version("resonance-serve"), "vllm": _vllm_version()}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return app


def _vllm_version() -> str:
    import vllm

    return vllm.__version__
