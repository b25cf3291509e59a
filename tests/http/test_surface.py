"""The HTTP surface over the fake engine: statuses, error bodies, streams, keys, admission.

What vLLM computes is tested on the real engine (tests/engine); here, what this server adds.
"""

import contextlib
import json
import math
import signal
import socket
import threading
import time

import httpx
import openai
import pytest

from harness.client import metric_samples, sse_data
from server import execution
from tests.app_server import app_server
from tests.helpers import closed_by_server, raw_request, token_prompt, wait_until
from tests.http.conftest import KEY, fake_engine

MODEL = "fake-model"
CHAT = [{"role": "user", "content": "Say something."}]


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def admitted(app, resource: str = "requests") -> float:
    (value,) = metric_samples(app.metrics_text(), "resonance_admitted", f'resource="{resource}"')
    return value


# ------------------------------------------------------------------ validation and errors
@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {"model": MODEL}, "prompt"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": -1}, "max_tokens"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "temperature": "hot"}, "temperature"),
        ("/v1/completions", {"model": MODEL, "prompt": [5, 99999]}, "prompt"),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 5000}, "max_tokens"),
        ("/v1/chat/completions", {"model": MODEL}, "messages"),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "x"}]}, "messages.0"),
        ("/v1/chat/completions", {"model": MODEL, "messages": CHAT, "n": 0}, "n"),
        (
            "/v1/chat/completions",
            {"model": MODEL, "messages": CHAT, "logit_bias": {"a": 1}},
            "logit_bias",
        ),
        # Unicode digits: a superscript two was a 400 with Python's int() message, an
        # Arabic-Indic one was token 1.
        (
            "/v1/completions",
            {"model": MODEL, "prompt": "x", "logit_bias": {"\u00b2": 1}},
            "logit_bias",
        ),
        (
            "/v1/completions",
            {"model": MODEL, "prompt": "x", "logit_bias": {"\u0661": 1}},
            "logit_bias",
        ),
        ("/tokenize", {"model": MODEL}, "prompt"),
        ("/detokenize", {"model": MODEL, "tokens": [10**6]}, "tokens"),
    ],
)
def test_bad_requests_are_400s_naming_the_field(http, path, body, param):
    error = error_of(http.post(path, json=body), 400)
    assert error["type"] == "invalid_request_error"
    assert error["param"] is not None and error["param"].startswith(param), error


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", {"prompt": "x"}),
        ("/v1/chat/completions", {"messages": CHAT}),
        ("/tokenize", {"prompt": "x"}),
    ],
)
def test_an_unknown_model_is_a_404_naming_it(http, path, body):
    error = error_of(http.post(path, json={"model": "gpt-4", **body}), 404)
    assert (error["param"], error["code"]) == ("model", "model_not_found")
    assert "gpt-4" in error["message"] and MODEL in error["message"]


def test_malformed_json_and_unknown_paths(http):
    json_body = {"Content-Type": "application/json"}
    response = http.post("/v1/completions", content=b"{not json", headers=json_body)
    error = error_of(response, 400)
    assert error["message"] == "request body is not valid JSON"
    assert error_of(http.get("/v1/nothing"), 404)["type"] == "not_found_error"


def test_keys_guard_everything_but_the_probes(app):
    with httpx.Client(base_url=app.base_url, timeout=10) as anonymous:
        response = anonymous.post("/v1/completions", json={"prompt": "x"})
        assert error_of(response, 401)["type"] == "authentication_error"
        assert response.headers["www-authenticate"] == "Bearer"
        wrong = {"Authorization": "Bearer nope"}
        assert anonymous.get("/v1/models", headers=wrong).status_code == 401
        assert anonymous.get("/health").status_code == 200
        assert anonymous.get("/metrics").status_code == 200


def test_a_body_over_the_limit_is_a_413(tokenizer):
    with app_server(fake_engine(tokenizer), max_request_body_bytes=2000) as app:
        response = httpx.post(
            f"{app.base_url}/v1/completions", json={"prompt": "x" * 4000}, timeout=10
        )
        assert error_of(response, 413)["message"] == "request body larger than 2000 bytes"


# ------------------------------------------------------------------ what reaches the engine
def test_the_request_reaches_the_engine_as_sampling_params(http, engine):
    body = {
        "model": MODEL,
        "prompt": token_prompt(10),
        "max_tokens": 7,
        "temperature": 0.5,
        "top_k": 4,
        "stop": ["xyz"],
        "seed": 3,
    }
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    (seen,) = [s for rid, s in engine.seen.items() if rid.startswith(response.json()["id"])]
    assert seen.token_ids == token_prompt(10)
    params = seen.params
    assert (params.max_tokens, params.temperature, params.top_k, params.seed) == (7, 0.5, 4, 3)
    assert params.stop == ["xyz"]
    assert response.json()["usage"] == {
        "prompt_tokens": 10,
        "completion_tokens": 7,
        "total_tokens": 17,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


def test_chat_template_kwargs_are_filtered_as_vllm_filters_them(http, engine):
    # Keys the template does not declare are dropped; arguments the request sets by its own
    # fields cannot be overridden through them (before: a 500 for "messages").
    body = {"model": MODEL, "messages": CHAT, "max_tokens": 2}
    plain = http.post("/v1/chat/completions", json=body)
    ignored = {"messages": [], "add_generation_prompt": False, "not_in_the_template": 1}
    filtered = http.post("/v1/chat/completions", json=body | {"chat_template_kwargs": ignored})
    assert filtered.status_code == 200, filtered.text
    prompts = [engine.seen[f"{r.json()['id']}-0"].token_ids for r in (plain, filtered)]
    assert prompts[0] == prompts[1]
    for key in ("tokenize", "chat_template"):
        refused = http.post("/v1/chat/completions", json=body | {"chat_template_kwargs": {key: 1}})
        assert error_of(refused, 400)["param"] == "chat_template_kwargs"


# ------------------------------------------------------------------ log-probabilities
@pytest.mark.parametrize("value", [float("-inf"), float("nan")])
def test_non_finite_logprobs_are_clamped_as_vllm_clamps_them(http, engine, value):
    engine.faults.logprob = value
    body = {"model": MODEL, "prompt": "x y z", "max_tokens": 3, "logprobs": 2, "echo": True}
    whole = http.post("/v1/completions", json=body)
    assert whole.status_code == 200, whole.text
    logprobs = whole.json()["choices"][0]["logprobs"]
    values = [v for v in logprobs["token_logprobs"] if v is not None]
    values += [v for top in logprobs["top_logprobs"] if top for v in top.values()]
    assert values and all(math.isfinite(v) and v <= -9999.0 for v in values)
    with http.stream("POST", "/v1/completions", json=body | {"stream": True}) as stream:
        events = sse_data(stream.iter_lines())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]  # strict JSON: no -Infinity, no NaN
    streamed = [v for c in chunks for v in c["choices"][0]["logprobs"]["token_logprobs"]]
    assert all(v is None or v <= -9999.0 for v in streamed)
    chat = {"model": MODEL, "messages": CHAT, "max_tokens": 3, "logprobs": True}
    response = http.post("/v1/chat/completions", json=chat | {"top_logprobs": 2})
    content = response.json()["choices"][0]["logprobs"]["content"]
    assert [item["logprob"] for item in content] == [-9999.0] * 3


# ------------------------------------------------------------------ streams
def test_a_chat_stream_is_framed_as_openai_frames_it(app):
    client = openai.OpenAI(base_url=f"{app.base_url}/v1", api_key=KEY, max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=CHAT,
            max_tokens=5,
            n=2,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert [(c.index, c.delta.role) for c in chunks[0].choices] == [
        (0, "assistant"),
        (1, "assistant"),
    ]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    for index in (0, 1):
        mine = [choice for c in chunks for choice in c.choices if choice.index == index]
        assert mine[-1].finish_reason == "length"
        assert all(c.finish_reason is None for c in mine[:-1])
        text = "".join(c.delta.content or "" for c in mine)
        whole = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=5, n=2)
        assert text == whole.choices[index].message.content
    assert len({c.id for c in chunks}) == 1


def test_a_completions_stream_ends_with_usage_and_done(http):
    body = {"model": MODEL, "prompt": ["a b", "c d"], "max_tokens": 3, "stream": True}
    body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
    with http.stream("POST", "/v1/completions", json=body) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        events = sse_data(stream.iter_lines())
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert {c["choices"][0]["index"] for c in chunks if c["choices"]} == {0, 1}
    assert all("usage" in c for c in chunks)
    assert chunks[-1]["usage"]["completion_tokens"] == 6


# ------------------------------------------------------------------ the engine failing
def test_a_full_engine_queue_is_a_503_with_retry_after(http, engine):
    engine.faults.queue_full = True
    body = {"model": MODEL, "prompt": "x", "max_tokens": 2}
    response = http.post("/v1/completions", json=body)
    error = error_of(response, 503)
    assert response.headers["retry-after"] == "1"
    assert "busy" in error["message"] and error["code"] == "engine_busy"
    chat = http.post("/v1/chat/completions", json={"model": MODEL, "messages": CHAT})
    assert error_of(chat, 503)["code"] == "engine_busy"
    with http.stream("POST", "/v1/completions", json=body | {"stream": True}) as stream:
        events = sse_data(stream.iter_lines())
    assert json.loads(events[-1])["error"]["code"] == "engine_busy"
    engine.faults.queue_full = False
    assert http.post("/v1/completions", json=body).status_code == 200


def test_a_dead_engine_fails_health_and_requests_and_the_server_exits_1(tokenizer):
    with app_server(fake_engine(tokenizer)) as app:
        assert httpx.get(f"{app.base_url}/health").status_code == 200
        app.engine.faults.step_seconds = 0.2
        body = {"model": MODEL, "prompt": "x", "max_tokens": 50}
        url = f"{app.base_url}/v1/completions"
        responses = []
        in_flight = threading.Thread(target=lambda: responses.append(httpx.post(url, json=body)))
        in_flight.start()
        wait_until(lambda: app.engine.running)
        app.engine.faults.dead = True
        in_flight.join(10)
        assert error_of(responses[0], 503)["code"] == "engine_error"
        app.thread.join(5)  # the server's watch sees the dead engine at its next tick
        assert not app.thread.is_alive()
        assert app.server.exit_code == 1


def test_a_request_past_its_deadline_is_a_504_and_aborted(tokenizer):
    with app_server(fake_engine(tokenizer), request_timeout=1) as app:
        app.engine.faults.stall = True
        body = {"model": MODEL, "prompt": "x", "max_tokens": 2}
        started = time.monotonic()
        response = httpx.post(f"{app.base_url}/v1/completions", json=body, timeout=10)
        assert error_of(response, 504)["code"] == "request_timeout"
        assert time.monotonic() - started < 5
        assert response.headers["x-should-retry"] == "false"
        assert app.engine.aborted == [f"{rid}" for rid in app.engine.seen]
        assert admitted(app) == 0


def test_a_stream_nobody_reads_holds_its_place_until_the_send_grace_then_is_closed(
    tokenizer, monkeypatch
):
    """Megabytes of log-probabilities at once fill the socket buffers of a client that never
    reads: past the deadline the engine's work is aborted, but the error event cannot be sent;
    the server waits the send grace for it, then closes the connection and frees the place."""
    monkeypatch.setattr(execution, "SEND_GRACE_SECONDS", 3.0)
    engine = fake_engine(tokenizer)
    settings = {"max_concurrent_requests": 1, "request_timeout": 2, "max_queued_tokens": 10**5}
    with app_server(engine, **settings) as app:
        body = {"model": MODEL, "prompt": ["x"] * 4, "n": 16, "max_tokens": 900, "logprobs": 20}
        silent = raw_request(int(app.base_url.rsplit(":", 1)[1]), body | {"stream": True})
        wait_until(lambda: admitted(app) == 1)
        time.sleep(2 + 1)  # past the deadline, inside the send grace
        assert engine.aborted  # the engine's work ended at the deadline
        busy = httpx.post(f"{app.base_url}/v1/completions", json=body, timeout=10)
        assert busy.status_code == 429, "freed at the deadline: the buffers took the stream"
        wait_until(lambda: admitted(app) == 0, seconds=6)  # unread: the grace ended it
        assert closed_by_server(silent, within=10)
        quick = {"model": MODEL, "prompt": "x", "max_tokens": 2}
        assert httpx.post(f"{app.base_url}/v1/completions", json=quick).status_code == 200
        silent.close()


# ------------------------------------------------------------------ admission
def test_admission_is_charged_while_in_flight_and_released_after(tokenizer):
    with app_server(fake_engine(tokenizer), max_concurrent_requests=1) as app:
        app.engine.faults.step_seconds = 0.2
        body = {"model": MODEL, "prompt": "x", "max_tokens": 5}
        url = f"{app.base_url}/v1/completions"
        first = threading.Thread(target=httpx.post, args=(url,), kwargs={"json": body})
        first.start()
        wait_until(lambda: app.engine.running)
        assert admitted(app) == 1 and admitted(app, "tokens") == 2 + 5
        busy = httpx.post(url, json=body)
        assert error_of(busy, 429)["code"] == "server_busy"
        assert busy.headers["retry-after"] == "1"
        first.join(10)
        assert admitted(app) == 0 and admitted(app, "tokens") == 0
        assert httpx.post(url, json=body).status_code == 200


def test_a_client_that_disconnects_has_its_engine_request_aborted(app, engine, http):
    engine.faults.stall = True  # no output until aborted
    body = {"model": MODEL, "prompt": "x", "max_tokens": 100, "stream": True}
    with http.stream("POST", "/v1/completions", json=body) as stream:
        assert stream.status_code == 200
        wait_until(lambda: engine.running)
        (request_id,) = engine.running
    wait_until(lambda: request_id in engine.aborted)
    wait_until(lambda: admitted(app) == 0)


def test_requests_are_counted_by_endpoint_and_status(app, http):
    def count(status: str) -> float:
        labels = f'endpoint="/v1/completions",status="{status}"'
        return sum(metric_samples(app.metrics_text(), "resonance_requests_total", labels))

    before = count("200"), count("400")
    http.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 1})
    http.post("/v1/completions", json={"model": MODEL})
    assert (count("200"), count("400")) == (before[0] + 1, before[1] + 1)


# ------------------------------------------------------------------ health
def test_health_fails_while_draining_and_for_a_stalled_engine(tokenizer):
    with app_server(fake_engine(tokenizer), liveness_timeout=5) as app:
        health = f"{app.base_url}/health"
        assert httpx.get(health).status_code == 200
        app.engine.faults.stalled = 4.0  # a long step: still alive
        assert httpx.get(health).status_code == 200
        app.engine.faults.stalled = 6.0
        stalled = error_of(httpx.get(health), 503)
        assert stalled["code"] == "engine_stalled" and "--liveness-timeout 5" in stalled["message"]
        app.engine.faults.stalled = 0.0  # it stepped again
        assert httpx.get(health).status_code == 200
        app.state.draining = True
        assert error_of(httpx.get(health), 503)["message"] == "the server is shutting down"
        body = {"model": MODEL, "prompt": "x", "max_tokens": 1}
        refused = httpx.post(f"{app.base_url}/v1/completions", json=body)
        assert refused.status_code == 503 and refused.headers["connection"] == "close"


def test_idle_connections_past_the_cap_cannot_lock_out_probes(tokenizer):
    """Silent sockets beyond --max-connections: the longest idle is closed for a newcomer."""
    with app_server(fake_engine(tokenizer), max_connections=40) as app:
        port = int(app.base_url.rsplit(":", 1)[1])
        silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(60)]
        try:
            answered = 0
            for _ in range(20):
                with (
                    contextlib.suppress(httpx.HTTPError),
                    httpx.Client(base_url=app.base_url, timeout=5) as probe,
                ):
                    answered += probe.get("/health").status_code == 200
            assert answered >= 18, f"{answered} of 20 probes answered"
            assert len(app.server.server_state.connections) <= 40
        finally:
            for sock in silent:
                sock.close()


# ------------------------------------------------------------------ draining
def open_stalled_stream(app) -> threading.Thread:
    """A streamed request whose engine work never ends, in flight until the server stops."""
    app.engine.faults.stall = True
    body = {"model": MODEL, "prompt": "x", "max_tokens": 5, "stream": True}

    def hold() -> None:
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(f"{app.base_url}/v1/completions", json=body, timeout=60)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    wait_until(lambda: app.engine.running)
    return holder


def test_the_drain_ends_at_its_timeout_whatever_the_clients_do(tokenizer):
    with app_server(fake_engine(tokenizer), drain_timeout=2) as app:
        open_stalled_stream(app)
        started = time.monotonic()
        app.server.handle_exit(signal.SIGTERM, None)
        assert httpx.get(f"{app.base_url}/health").status_code == 503
        app.thread.join(15)
        assert not app.thread.is_alive(), "still serving past the drain timeout"
        assert time.monotonic() - started < 2 + 6  # the timeout, then the shutdown grace
        assert app.server.exit_code == 0


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_stops_at_once(tokenizer, second):
    with app_server(fake_engine(tokenizer), drain_timeout=60) as app:
        open_stalled_stream(app)
        app.server.handle_exit(signal.SIGTERM, None)
        time.sleep(0.3)
        assert app.thread.is_alive()  # draining
        started = time.monotonic()
        app.server.handle_exit(second, None)
        app.thread.join(10)
        assert not app.thread.is_alive() and time.monotonic() - started < 3
        assert app.server.exit_code == 0 and app.server._captured_signals == []


# ------------------------------------------------------------------ every generation route
ROUTES = {
    "/v1/completions": {"model": MODEL, "prompt": "x", "max_tokens": 5},
    "/v1/chat/completions": {"model": MODEL, "messages": CHAT, "max_tokens": 5},
    "/v1/responses": {"model": MODEL, "input": "x", "max_output_tokens": 5},
    "/v1/messages": {"model": MODEL, "messages": CHAT, "max_tokens": 5},
}


@pytest.mark.parametrize("path", list(ROUTES))
def test_every_route_is_admitted_timed_aborted_and_counted_at_the_seam(tokenizer, path):
    engine = fake_engine(tokenizer)
    with app_server(engine, max_concurrent_requests=1, request_timeout=1) as app:
        url, body = f"{app.base_url}{path}", ROUTES[path]
        engine.faults.stall = True
        holder = threading.Thread(target=lambda: httpx.post(url, json=body, timeout=10))
        holder.start()
        wait_until(lambda: engine.running)
        assert admitted(app, "tokens") > 0  # its tokens are charged while it runs
        busy = httpx.post(url, json=body, timeout=10)
        assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
        holder.join(10)  # the stalled one ends at its deadline: aborted in the engine
        assert engine.aborted and admitted(app) == 0 and admitted(app, "tokens") == 0
        timed_out = httpx.post(url, json=body, timeout=10)
        assert timed_out.status_code == 504
        engine.faults.stall = False
        with httpx.stream("POST", url, json=body | {"stream": True}, timeout=10) as stream:
            assert stream.status_code == 200
        wait_until(lambda: admitted(app) == 0)
        counted = metric_samples(
            app.metrics_text(), "resonance_requests_total", f'endpoint="{path}"'
        )
        assert sum(counted) == 4


def test_a_lora_load_past_its_timeout_is_refused_and_leaves_nothing(tokenizer, tmp_path):
    engine = fake_engine(tokenizer, max_lora_rank=8)
    settings = {"allow_runtime_lora": True, "lora_load_timeout": 0.5}
    (tmp_path / "adapter_config.json").write_text('{"r": 8}')
    with app_server(engine, **settings) as app:
        engine.faults.lora_load_seconds = 5
        body = {"lora_name": "slow", "lora_path": str(tmp_path)}
        started = time.monotonic()
        refused = httpx.post(f"{app.base_url}/v1/load_lora_adapter", json=body, timeout=10)
        assert error_of(refused, 400)["code"] == "lora_load_timeout"
        assert time.monotonic() - started < 3
        models = httpx.get(f"{app.base_url}/v1/models").json()["data"]
        assert [m["id"] for m in models] == [MODEL] and engine.loras == {}
        engine.faults.lora_load_seconds = 0
        loaded = httpx.post(f"{app.base_url}/v1/load_lora_adapter", json=body, timeout=10)
        assert loaded.status_code == 200 and len(engine.loras) == 1
