"""The real server under hostile input, overload, disconnects and shutdown."""

import concurrent.futures
import signal
import threading
import time

import httpx
import psutil
import pytest

from tests.conftest import (
    API_KEY,
    MAX_QUEUED_PROMPT_TOKENS,
    MODEL_NAME,
    ORIGINAL_CONTEXT,
    SERVED_CONTEXT,
)
from tests.test_server_api import PROMPT, token_prompt

pytestmark = pytest.mark.engine

PROTECTED = [
    ("GET", "/v1/models", None),
    ("POST", "/v1/completions", {"model": MODEL_NAME, "prompt": "x", "max_tokens": 1}),
    (
        "POST",
        "/v1/chat/completions",
        {"model": MODEL_NAME, "messages": [{"role": "user", "content": "x"}], "max_tokens": 1},
    ),
    ("POST", "/tokenize", {"prompt": "x"}),
    ("POST", "/detokenize", {"tokens": [5]}),
]


def metric(http: httpx.Client, name: str) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not exported")


def wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def open_stream(http: httpx.Client, body: dict):
    """Start a streamed request and read its first event; keep both returned objects alive
    (dropping the line iterator closes the connection, which is a disconnect)."""
    stream = http.stream("POST", "/v1/completions", json=body)
    response = stream.__enter__()
    assert response.status_code == 200
    lines = response.iter_lines()
    next(lines)
    return stream, lines


def greedy(http: httpx.Client, prompt=PROMPT, max_tokens: int = 8) -> str:
    body = {"model": MODEL_NAME, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["text"]


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong-key", f"Basic {API_KEY}", f"Bearer {API_KEY}x"]
)
def test_every_protected_route_needs_a_valid_key(server, method, path, body, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    response = httpx.request(method, server.base_url + path, json=body, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
def test_any_configured_key_is_accepted(server, method, path, body):
    headers = {"Authorization": "Bearer test-key-2"}
    response = httpx.request(method, server.base_url + path, json=body, headers=headers)
    assert response.status_code == 200, response.text


def test_probes_are_open_by_default(server):
    assert httpx.get(f"{server.base_url}/health").status_code == 200
    assert "resonance_requests_total" in httpx.get(f"{server.base_url}/metrics").text


def test_prompt_tokens_beyond_the_limit_get_429_and_the_server_recovers(http):
    """Hold streams of long prompts open until the next one no longer fits."""
    prompt_tokens = ORIGINAL_CONTEXT * 3
    fitting = MAX_QUEUED_PROMPT_TOKENS // prompt_tokens
    streams = []
    try:
        for i in range(fitting):
            body = {
                "model": MODEL_NAME,
                "prompt": token_prompt(prompt_tokens, salt=i),
                "max_tokens": SERVED_CONTEXT - prompt_tokens,
                "n": 16,  # seconds of decoding: still running when the next request comes
                "ignore_eos": True,
                "stream": True,
            }
            stream, lines = open_stream(http, body)
            streams.append((stream, lines))
        over = http.post(
            "/v1/completions",
            json={"model": MODEL_NAME, "prompt": token_prompt(prompt_tokens), "max_tokens": 1},
        )
        assert over.status_code == 429
        assert over.headers["retry-after"] == "1"
        assert "prompt tokens are in flight" in over.json()["error"]["message"]
    finally:
        for stream, _ in streams:
            stream.__exit__(None, None, None)  # disconnect mid-stream
    assert wait_for(lambda: metric(http, "resonance_num_requests_running") == 0, 5)
    assert greedy(http)  # admitted again


def test_body_larger_than_the_limit_gets_413(http):
    huge = b'{"model": "x", "prompt": "' + b"a" * (9 * 1024 * 1024) + b'"}'
    response = http.post("/v1/completions", content=huge)
    assert response.status_code == 413
    chunked = http.post("/v1/completions", content=iter([huge[:4_000_000], huge[4_000_000:]]))
    assert chunked.status_code == 413
    assert "larger than" in chunked.json()["error"]["message"]


def test_disconnected_streams_are_aborted(http):
    """20 clients drop mid-stream: the engine stops their work within a second or two."""
    body = {"model": MODEL_NAME, "prompt": PROMPT, "max_tokens": 900, "ignore_eos": True}
    stream_body = body | {"stream": True}
    streams = [open_stream(http, stream_body) for _ in range(20)]
    assert metric(http, "resonance_num_requests_running") > 0
    for stream, _ in streams:
        stream.__exit__(None, None, None)
    assert wait_for(lambda: metric(http, "resonance_num_requests_running") == 0, 2.5)
    # A whole (not streamed) request whose client gives up is aborted too: 16 x 900 tokens
    # would take seconds; the client leaves after half of one.
    try:
        response = http.post("/v1/completions", json=body | {"n": 16}, timeout=0.5)
        pytest.fail(f"answered before the client gave up: {response.status_code} {response.text}")
    except httpx.TimeoutException:
        pass
    assert wait_for(lambda: metric(http, "resonance_num_requests_running") == 0, 2.5)
    assert greedy(http) == greedy(http)


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b'{"model": "x", "prompt": ', "application/json"),  # malformed JSON
        (b'{"model": 5, "prompt": {"a": 1}}', "application/json"),  # wrong types
        (b'{"model": "m", "prompt": "\xff\xfe"}', "application/json"),  # invalid UTF-8
        (b"model=x&prompt=y", "application/x-www-form-urlencoded"),
        (b"just text", "text/plain"),
        (b"[1, 2, 3]", "application/json"),
        (b"null", "application/json"),
        (b'{"model": "m", "prompt": "x", "temperature": 1e309}', "application/json"),  # inf
        (b'{"model": "m", "prompt": "x", "top_p": NaN}', "application/json"),
    ],
)
def test_malformed_bodies_get_400(http, content, content_type):
    response = http.post("/v1/completions", content=content, headers={"Content-Type": content_type})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"]


@pytest.mark.parametrize(
    "fields",
    [
        {"prompt": ""},
        {"prompt": []},
        {"prompt": [[]]},
        {"prompt": "word " * 3000},  # enormous: longer than the context
        {"prompt": [-1, 5]},
        {"prompt": [5, 2000]},  # just outside the vocabulary
        {"prompt": [5, 2**62]},
        {"prompt": "x", "max_tokens": -5},
        {"prompt": "x", "max_tokens": 2**62},
        {"prompt": "x", "top_p": 0},
        {"prompt": "x", "top_k": 10**9},
        {"prompt": "x", "n": 10**6},
        {"prompt": "x", "logprobs": 10**6},
        {"prompt": "x", "seed": 2**80},
        {"prompt": "x", "stop": ["a"] * 1000},
        {"prompt": "x", "presence_penalty": -1e9},
        {"prompt": "x", "stream_options": {"include_usage": "maybe"}},
        {"prompt": "x", "unknown_field": True},
    ],
)
def test_hostile_values_get_4xx(http, fields):
    response = http.post("/v1/completions", json={"model": MODEL_NAME, **fields})
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]["message"]


def test_bounded_overload_completes_or_gets_429(http, server, capsys):
    """64 clients at once, each with a prompt of three times the trained context."""
    peak_rss = 0
    stop = threading.Event()

    def watch_memory() -> None:
        nonlocal peak_rss
        while not stop.is_set():
            peak_rss = max(peak_rss, server.rss_bytes())
            time.sleep(0.05)

    def one(i: int) -> int:
        body = {
            "model": MODEL_NAME,
            "prompt": token_prompt(ORIGINAL_CONTEXT * 3, salt=100 + i),
            "max_tokens": 8,
        }
        return http.post("/v1/completions", json=body).status_code

    watcher = threading.Thread(target=watch_memory)
    watcher.start()
    try:
        with concurrent.futures.ThreadPoolExecutor(64) as pool:
            statuses = list(pool.map(one, range(64)))
    finally:
        stop.set()
        watcher.join()
    counts = {status: statuses.count(status) for status in set(statuses)}
    with capsys.disabled():
        print(f"\noverload: 64 x {ORIGINAL_CONTEXT * 3}-token prompts -> {counts}, "
              f"peak RSS of the server and its engine {peak_rss / 2**30:.2f} GiB")  # fmt: skip
    assert set(counts) <= {200, 429}
    assert counts.get(200, 0) >= 1
    assert peak_rss < 12 * 2**30
    assert wait_for(lambda: metric(http, "resonance_num_requests_running") == 0, 5)


def test_fuzzing_the_openapi_schema_gives_no_5xx(http, server):
    from tests.fuzzing import fuzz_server

    outcomes = fuzz_server(server.base_url, {"Authorization": f"Bearer {API_KEY}"})
    assert outcomes.cases >= 60
    assert outcomes.server_errors == [], outcomes.server_errors
    # The server still answers, and answers right.
    assert greedy(http, max_tokens=12) == greedy(http, max_tokens=12)
    assert http.get("/health").status_code == 200


@pytest.mark.last
def test_sigterm_finishes_the_running_generation_then_exits_0(http, server):
    body = {
        "model": MODEL_NAME,
        "prompt": token_prompt(SERVED_CONTEXT // 2),
        "max_tokens": 300,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    engine_processes = psutil.Process(server.process.pid).children(recursive=True)
    assert engine_processes
    with http.stream("POST", "/v1/completions", json=body) as response:
        lines = response.iter_lines()
        next(lines)
        server.process.send_signal(signal.SIGTERM)
        with httpx.Client(base_url=server.base_url) as other:
            assert wait_for(lambda: other.get("/health").status_code == 503, 5)
            refused = other.post(
                "/v1/completions",
                json={"model": MODEL_NAME, "prompt": "x"},
                headers={"Authorization": f"Bearer {API_KEY}"},
            )
            assert refused.status_code == 503
        events = [line for line in lines if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert '"completion_tokens": 300' in events[-2]
    assert server.process.wait(60) == 0
    _, alive = psutil.wait_procs(engine_processes, timeout=10)
    assert alive == []  # the engine's processes ended with it
