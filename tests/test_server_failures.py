"""A second server for the tests that break it: request deadlines, then a dead engine."""

import json
import signal
import time

import httpx
import psutil
import pytest

from tests.conftest import start_server, stop_server

pytestmark = pytest.mark.engine

# n x max_tokens output tokens take several seconds here, well past the 1 s deadline.
SLOW = {"prompt": "The river", "n": 16, "max_tokens": 240, "ignore_eos": True}


@pytest.fixture(scope="module")
def fragile_server(plain_checkpoint, tmp_path_factory):
    running = start_server(
        [
            "--model", str(plain_checkpoint),
            "--served-model-name", "fragile",
            "--dtype", "float32",
            "--enforce-eager",
            "--request-timeout", "1",
        ],
        tmp_path_factory.mktemp("fragile") / "server.log",
    )  # fmt: skip
    yield running
    stop_server(running)


def running_requests(base_url: str) -> float:
    for line in httpx.get(f"{base_url}/metrics").text.splitlines():
        if line.startswith("resonance_num_requests_running "):
            return float(line.split()[-1])
    raise AssertionError("no resonance_num_requests_running")


def test_request_past_its_deadline_is_aborted_with_408(fragile_server):
    url = fragile_server.base_url
    start = time.monotonic()
    response = httpx.post(f"{url}/v1/completions", json={"model": "fragile", **SLOW}, timeout=30)
    assert time.monotonic() - start < 5
    assert response.status_code == 408
    assert response.json()["error"]["code"] == "request_timeout"
    body = {"model": "fragile", **SLOW, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as stream:
        events = [line[6:] for line in stream.iter_lines() if line.startswith("data: ")]
    assert json.loads(events[-1])["error"]["code"] == "request_timeout"
    time.sleep(1)
    assert running_requests(url) == 0
    quick = httpx.post(f"{url}/v1/completions", json={"model": "fragile", "prompt": "x"})
    assert quick.status_code == 200


def test_dead_engine_fails_health_and_exits_non_zero(fragile_server):
    server = psutil.Process(fragile_server.process.pid)
    (engine_core,) = [p for p in server.children(recursive=True) if "EngineCore" in p.name()]
    engine_core.send_signal(signal.SIGKILL)
    # The server notices, stops answering health checks and exits so that it is restarted.
    assert fragile_server.process.wait(30) not in (0, None)
    assert "engine" in fragile_server.output().lower()
