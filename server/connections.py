"""Connections that never finish a request are closed; open connections are capped.

uvicorn closes idle keep-alive connections but gives a connection all the time it likes to
send a request's headers and body, so a few hundred silent or trickling sockets hold the
server's file descriptors and memory forever. This protocol (uvicorn's httptools one) closes a
connection whose headers are not complete ``header_timeout`` seconds after it opened (or after
its request began), or whose body is not complete ``body_timeout`` seconds after its headers.
Beyond ``max_connections``, the connection idle the longest (one that has not sent a whole
request header since it opened or since its last response) is closed to make room, so silent
sockets, however often they are renewed, cannot lock out a client (or a health probe) that
sends its request at once; only when every connection is busy is the new one closed.
"""

import asyncio
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

logger = logging.getLogger(__name__)


def guarded_protocol(
    header_timeout: float, body_timeout: float, max_connections: int
) -> type[HttpToolsProtocol]:
    idle: dict[HttpToolsProtocol, None] = {}  # waiting for a request's headers, oldest first

    class GuardedProtocol(HttpToolsProtocol):
        _timer: asyncio.TimerHandle | None = None

        def _idle(self) -> None:
            idle.pop(self, None)
            idle[self] = None

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
                if not idle:
                    logger.warning(
                        "%d open connections, all busy: closing a new one", max_connections
                    )
                    transport.close()
                    return
                oldest = next(iter(idle))
                idle.pop(oldest)
                logger.info("%d open connections: closing the longest idle", max_connections)
                oldest.transport.close()
            self._idle()
            self._arm(header_timeout, "request headers")

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            idle.pop(self, None)
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():  # kept alive: idle until its next request
                self._idle()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm(header_timeout, "request headers")

        def on_headers_complete(self) -> None:
            idle.pop(self, None)
            self._arm(body_timeout, "request body")
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()

    return GuardedProtocol
