"""The FastAPI application: OpenAI routes, tokenizer routes, health, version and metrics."""

import time
from importlib.metadata import version
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from vllm.entrypoints.serve.utils.api_utils import with_cancellation

from server.engine import Engine
from server.errors import APIError, install_error_handlers
from server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from server.serving import Serving

ENDPOINTS = (
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/models",
    "/tokenize",
    "/detokenize",
    "/health",
    "/version",
    "/metrics",
)
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class CountRequests:
    """ASGI middleware: ``resonance_requests_total`` by endpoint and response status."""

    def __init__(self, app: ASGIApp, counter: Any) -> None:
        self.app, self.counter = app, counter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope["path"]
            endpoint = path if path in ENDPOINTS else "other"
            self.counter.labels(endpoint=endpoint, status=str(status)).inc()


def create_app(engine: Engine) -> FastAPI:
    serving = Serving(engine)
    info = engine.info
    created = int(time.time())
    app = FastAPI(title="resonance-serve", version=version("resonance-serve"))
    install_error_handlers(app)
    app.add_middleware(CountRequests, counter=engine.metrics.requests)

    @app.post("/v1/completions")
    @with_cancellation
    async def completions(request: CompletionRequest, raw_request: Request) -> Response:
        job = serving.completion_job(request)
        if request.stream:
            stream = serving.stream_completion(job)
            return StreamingResponse(stream, media_type="text/event-stream", headers=SSE_HEADERS)
        return JSONResponse(await serving.complete(job))

    @app.post("/v1/chat/completions")
    @with_cancellation
    async def chat_completions(request: ChatCompletionRequest, raw_request: Request) -> Response:
        job = serving.chat_job(request)
        if request.stream:
            stream = serving.stream_chat(job)
            return StreamingResponse(stream, media_type="text/event-stream", headers=SSE_HEADERS)
        return JSONResponse(await serving.chat(job))

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
