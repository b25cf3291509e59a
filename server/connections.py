"""Connections that never finish a request are closed; open connections are capped.

uvicorn closes idle keep-alive connections but gives a connection all the time it likes to
send a request's headers and body, so a few hundred silent or trickling sockets hold the
server's file descriptors and memory forever. This protocol (uvicorn's httptools one) closes a
connection whose headers are not complete ``header_timeout`` seconds after it opened (or after
its request began), or whose body is not complete ``body_timeout`` seconds after its headers;
beyond ``max_connections`` a new connection is closed at once.
"""

import asyncio
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger(__name__)


def guarded_protocol(
    header_timeout: float, body_timeout: float, max_connections: int
) -> type[HttpToolsProtocol]:
    class GuardedProtocol(HttpToolsProtocol):
        _timer: asyncio.TimerHandle | None = None

        def _arm(self, seconds: float, what: str) -> None:
            self._disarm()
            self._timer = self.loop.call_later(seconds, self._expire, what)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _expire(self, what: str) -> None:
            logger.info("closing a connection that sent no complete %s in time", what)
            self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                logger.warning("more than %d open connections: closing one", max_connections)
                transport.close()
                return
            self._arm(header_timeout, "request headers")

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm(header_timeout, "request headers")

        def on_headers_complete(self) -> None:
            self._arm(body_timeout, "request body")
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()

    return GuardedProtocol
