"""The app over an engine of the tests' choosing (the fake one), served for real.

`AppServer` runs `server.app.create_app` under the server's own uvicorn server (draining, the
engine watch) and connection protocol, in a thread of the test process, so that the `openai`
client and httpx talk real HTTP to it (streams, disconnects, status lines) without an engine.
"""

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from prometheus_client import CollectorRegistry

from harness.servers import free_port
from server.app import build_services, create_app
from server.cli import DrainingServer
from server.connections import guarded_protocol
from server.metrics import Metrics
from server.middleware import ServerState, key_digest
from server.services import Services
from server.settings import Settings


@dataclass
class AppServer:
    base_url: str
    services: Services
    server: DrainingServer
    thread: threading.Thread

    @property
    def engine(self) -> Any:
        return self.services.engine

    @property
    def state(self) -> ServerState:
        return self.services.state

    def metrics_text(self) -> str:
        return httpx.get(f"{self.base_url}/metrics", timeout=10).text


@contextlib.contextmanager
def app_server(engine: Any, **settings: Any) -> Iterator[AppServer]:
    """The app over ``engine`` with these settings (field names), on a free loopback port."""
    settings.setdefault("model", "unused")
    config = Settings(**settings)
    state = ServerState(api_keys=[key_digest(k) for k in config.accepted_api_keys()])
    metrics = Metrics(engine.info.max_model_len, CollectorRegistry())
    queued = config.max_queued_tokens or 16 * engine.info.max_model_len
    services = build_services(engine, config, state, metrics, queued)
    port = free_port()
    protocol = guarded_protocol(config.header_timeout, config.body_timeout, config.max_connections)
    server = DrainingServer(
        uvicorn.Config(
            create_app(services), host="127.0.0.1", port=port, http=protocol, log_level="warning"
        ),
        state,
        engine,
        config.drain_timeout,
    )
    thread = threading.Thread(target=asyncio.run, args=(server.serve(),), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the in-process app did not start")
        time.sleep(0.01)
    try:
        yield AppServer(f"http://127.0.0.1:{port}", services, server, thread)
    finally:
        server.should_exit = True
        thread.join(10)
