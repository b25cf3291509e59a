"""What every HTTP request passes before a route: counting, draining, keys, body size.

One pure ASGI middleware (no per-chunk work on streamed responses beyond reading the status).
"""

import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from prometheus_client import Counter
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.errors import error_body

PROBES = ("/health", "/metrics")


def _protected(path: str, probes_too: bool) -> bool:
    """With keys set, everything but the probes (and with ``probes_too``, those as well)."""
    return probes_too or path not in PROBES


def key_digest(key: str | bytes) -> bytes:
    """Keys are compared as fixed-length digests, so timing tells nothing of their length."""
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()


@dataclass
class ServerState:
    """Shared between the middleware, the routes and the shutdown logic."""

    draining: bool = False
    active_requests: int = 0
    api_keys: list[bytes] = field(default_factory=list)  # digests (`key_digest`)


@dataclass
class RequestContext:
    """What the route side tells the middleware about one request (kept in its ASGI scope)."""

    KEY: ClassVar[str] = "resonance.context"
    cleanups: list[Callable[[], None]] = field(default_factory=list)  # run when it ends
    status: int | None = None  # a stream's outcome, when it failed after its 200 was sent
    headers: dict[str, str] = field(default_factory=dict)  # added to the response's

    @classmethod
    def of(cls, scope: Scope) -> "RequestContext":
        return scope.setdefault(cls.KEY, cls())


class BodyTooLarge(HTTPException):
    """Raised while a route reads the body; FastAPI passes HTTP exceptions to its handlers."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes")


class Gatekeeper:
    def __init__(
        self,
        app: ASGIApp,
        state: ServerState,
        counter: Counter,
        endpoints: frozenset[str],
        max_body_bytes: int,
        probes_need_key: bool,
    ) -> None:
        """``endpoints``: the paths of the app's routes, each counted under its own label."""
        self.app, self.state, self.counter, self.endpoints = app, state, counter, endpoints
        self.max_body_bytes, self.probes_need_key = max_body_bytes, probes_need_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if context.headers:
                    extra = [(k.encode(), v.encode()) for k, v in context.headers.items()]
                    message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        self.state.active_requests += 1
        context = RequestContext.of(scope)
        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                await _reply(send_status, *refusal)
                return
            await self.app(scope, self._limited(receive), send_status)
        finally:
            for callback in context.cleanups:
                callback()
            self.state.active_requests -= 1
            endpoint = path if path in self.endpoints else "other"
            status = context.status or status
            self.counter.labels(endpoint=endpoint, status=str(status)).inc()

    def _refusal(self, scope: Scope) -> tuple[int, str, dict[str, str]] | None:
        if self.state.draining:
            return 503, "the server is shutting down", {"Connection": "close"}
        headers = dict(scope["headers"])
        needs_key = self.state.api_keys and _protected(scope["path"], self.probes_need_key)
        if needs_key and not self._authorized(headers):
            message = "missing or invalid API key (Authorization: Bearer <key>, or x-api-key)"
            return 401, message, {"WWW-Authenticate": "Bearer"}
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return 413, f"request body larger than {self.max_body_bytes} bytes", {}
        return None

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        """``Authorization: Bearer KEY`` (OpenAI's clients) or ``x-api-key: KEY``
        (Anthropic's), with the same keys."""
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() != b"bearer":
            token = headers.get(b"x-api-key", b"")
        if not token.strip():
            return False
        # Compare with every key, in constant time each, whatever matches.
        digest = key_digest(token.strip())
        matches = [hmac.compare_digest(digest, key) for key in self.state.api_keys]
        return any(matches)

    def _limited(self, receive: Receive) -> Receive:
        """Count the body as it arrives (a client may send no or a false Content-Length)."""
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes)
            return message

        return limited


async def _reply(send: Send, status: int, message: str, headers: dict[str, str] | None = None):
    body = json.dumps(error_body(status, message)).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})
