"""Each router stands alone: mounted on a bare FastAPI app over stand-in services."""

from types import SimpleNamespace

from fastapi import FastAPI
from fastapi.testclient import TestClient

from server.errors import install_error_handlers
from server.middleware import ServerState
from server.plan import ModelInfo
from server.routes import models, probes


class StandInEngine:
    info = ModelInfo(
        name="m",
        checkpoint="/srv/secret/path",
        origin="a test",
        trained_context=256,
        max_model_len=1024,
        rope={"rope_type": "resonance_yarn", "factor": 4.0},
    )

    def __init__(self, healthy: bool = True) -> None:
        self.healthy = healthy

    async def check_health(self) -> None:
        if not self.healthy:
            raise RuntimeError("engine dead")


def app_with(router, **services) -> TestClient:
    app = FastAPI()
    app.state.services = SimpleNamespace(created=0, **services)
    install_error_handlers(app)
    app.include_router(router)
    return TestClient(app)


def test_health_router_alone():
    ok = app_with(probes.router, state=ServerState(), engine=StandInEngine())
    assert ok.get("/health").status_code == 200
    draining = app_with(probes.router, state=ServerState(draining=True), engine=StandInEngine())
    assert draining.get("/health").json()["error"]["message"] == "the server is shutting down"
    dead = app_with(probes.router, state=ServerState(), engine=StandInEngine(healthy=False))
    assert dead.get("/health").status_code == 503


def test_models_router_alone_shows_the_name_not_the_path():
    client = app_with(models.router, engine=StandInEngine(), adapters=SimpleNamespace(all=list))
    (card,) = client.get("/v1/models").json()["data"]
    assert card["root"] == "m" and card["max_model_len"] == 1024
    assert "/srv/secret/path" not in client.get("/v1/models").text


def test_router_probe_paths_show_the_served_name_not_the_path():
    client = app_with(models.router, engine=StandInEngine(), adapters=SimpleNamespace(all=list))
    for path in ("/server_info", "/get_server_info", "/model_info", "/get_model_info"):
        facts = client.get(path).json()
        assert facts["served_model_name"] == facts["model_path"] == "m", path
        assert facts["max_model_len"] == 1024 and facts["rope_parameters"]["factor"] == 4.0
        assert "/srv/secret/path" not in client.get(path).text
