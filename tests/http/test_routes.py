"""Each router stands alone: mounted on a bare FastAPI app over stand-in services."""

from types import SimpleNamespace

from fastapi import FastAPI
from fastapi.testclient import TestClient

from server.errors import APIError, install_error_handlers
from server.plan import ModelInfo
from server.routes import lora, models, tokens


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


class StandInPrompts:
    vocab_size = 10

    async def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        return ([1] if add_special_tokens else []) + [len(word) for word in text.split()]

    async def decode_off_loop(self, ids: list[int]) -> str:
        return " ".join("x" * i for i in ids)


class StandInExecutor:
    """Admission that counts its tickets, and the one model name 'm'."""

    def __init__(self) -> None:
        self.admission, self.open_tickets = self, 0

    def check_model(self, name):
        if name not in (None, "m"):
            raise APIError(404, f"The model '{name}' does not exist", param="model")

    def admit(self, sequences: int):
        self.open_tickets += 1
        return SimpleNamespace(release=lambda: setattr(self, "open_tickets", self.open_tickets - 1))


def test_tokens_router_alone():
    executor = StandInExecutor()
    client = app_with(
        tokens.router, executor=executor, prompts=StandInPrompts(), engine=StandInEngine()
    )
    body = client.post("/tokenize", json={"prompt": "ab cde"}).json()
    assert body == {"tokens": [1, 2, 3], "count": 3, "max_model_len": 1024}
    plain = client.post("/tokenize", json={"prompt": "ab", "add_special_tokens": False}).json()
    assert plain["tokens"] == [2] and executor.open_tickets == 0
    assert client.post("/detokenize", json={"tokens": [2, 3]}).json() == {"prompt": "xx xxx"}
    outside = client.post("/detokenize", json={"tokens": [10]})
    assert outside.status_code == 400 and outside.json()["error"]["param"] == "tokens"
    unknown = client.post("/tokenize", json={"prompt": "a", "model": "other"})
    assert unknown.status_code == 404 and executor.open_tickets == 0
    too_many = client.post("/detokenize", json={"tokens": [1] * 1025})
    assert too_many.status_code == 400 and "1024" in too_many.json()["error"]["message"]


class StandInAdapters:
    def __init__(self) -> None:
        self.loaded: dict[str, int] = {}

    async def load(self, name: str, path: str):
        if name in self.loaded:
            raise APIError(400, f"a model named {name!r} is served already", param="lora_name")
        self.loaded[name] = 8
        return SimpleNamespace(name=name, rank=8)

    async def unload(self, name: str) -> None:
        if self.loaded.pop(name, None) is None:
            raise APIError(404, f"no adapter named {name!r}", param="lora_name")


def test_lora_router_alone():
    adapters = StandInAdapters()
    client = app_with(lora.router, adapters=adapters)
    body = {"lora_name": "a", "lora_path": "/adapters/a"}
    assert client.post("/v1/load_lora_adapter", json=body).json() == {"loaded": "a", "rank": 8}
    assert client.post("/v1/load_lora_adapter", json=body).status_code == 400
    assert client.post("/v1/unload_lora_adapter", json={"lora_name": "a"}).status_code == 200
    gone = client.post("/v1/unload_lora_adapter", json={"lora_name": "a"})
    assert gone.status_code == 404 and adapters.loaded == {}
    missing = client.post("/v1/load_lora_adapter", json={"lora_name": "b"})
    assert missing.status_code == 400  # lora_path is required: the request body's own check
