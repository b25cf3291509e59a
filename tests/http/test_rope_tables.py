"""The per-request policy at the seam, over the fake engine: which table each engine request
is sent with (offset, cache salt), the switch of a request that outgrows the unscaled table
(whole and streamed, as one response), the header, /v1/models and the metrics. What the
tables compute is tested on the real engine (tests/engine/test_per_request_rope.py)."""

import json

import httpx
import pytest

from rope_plugins.catalog import TABLE_OFFSET
from server.plan import RopePolicy
from server.rope_tables import CONTINUATION, UNSCALED_SALT
from tests.app_server import app_server
from tests.fake_engine import FakeEngine, Faults
from tests.helpers import ORIGINAL_CONTEXT, SERVED_CONTEXT, sse_events, token_prompt, wait_until

MODEL = "fake-model"
POLICY = RopePolicy("per-request", "test", trained=ORIGINAL_CONTEXT, table_offset=SERVED_CONTEXT)


@pytest.fixture(scope="module")
def app(tokenizer):
    engine = FakeEngine.of(tokenizer, SERVED_CONTEXT, ORIGINAL_CONTEXT, rope_policy=POLICY)
    with app_server(engine, request_timeout=30) as running:
        yield running


@pytest.fixture(scope="module")
def http(app):
    with httpx.Client(base_url=app.base_url, timeout=30) as client:
        yield client


def complete(http, prompt, **body) -> httpx.Response:
    response = http.post("/v1/completions", json={"model": MODEL, "prompt": prompt, **body})
    assert response.status_code == 200, response.text
    return response


def sent(app, response: httpx.Response, index: int = 0, continuation: bool = False):
    engine_id = f"{response.json()['id']}-{index}" + (CONTINUATION if continuation else "")
    return app.engine.seen[engine_id]


def test_a_request_that_fits_the_trained_length_is_sent_unscaled(app, http):
    response = complete(http, token_prompt(100), max_tokens=156)
    assert response.headers["x-rope-table"] == "unscaled"
    request = sent(app, response)
    assert request.params.extra_args == {TABLE_OFFSET: SERVED_CONTEXT}
    assert request.cache_salt == UNSCALED_SALT and request.params.max_tokens == 156


def test_a_longer_request_is_sent_as_the_static_server_sends_it(app, http):
    response = complete(http, token_prompt(300), max_tokens=16)
    assert response.headers["x-rope-table"] == "scaled"
    request = sent(app, response)
    assert request.params.extra_args is None and request.cache_salt is None


def test_each_prompt_of_a_batch_gets_its_own_table(app, http):
    response = complete(http, [token_prompt(10), token_prompt(400)], max_tokens=8)
    assert response.headers["x-rope-table"] == "unscaled,scaled"
    assert sent(app, response, 0).cache_salt == UNSCALED_SALT
    assert sent(app, response, 1).cache_salt is None


def test_a_request_that_outgrows_the_trained_length_goes_on_scaled_in_one_response(app, http):
    prompt = token_prompt(100)
    response = complete(
        http, prompt, max_tokens=200, logprobs=1, return_token_ids=True, min_tokens=180
    )
    assert response.headers["x-rope-table"] == "unscaled-then-scaled"
    first, rest = sent(app, response), sent(app, response, continuation=True)
    assert first.params.max_tokens == 156 and first.params.min_tokens == 156
    assert first.cache_salt == UNSCALED_SALT
    (choice,) = response.json()["choices"]
    produced = choice["token_ids"]
    assert len(produced) == 200 and choice["finish_reason"] == "length"
    # the continuation: prompt + what the unscaled part produced, scaled, for the rest
    assert rest.token_ids == prompt + produced[:156]
    assert rest.params.max_tokens == 44 and rest.params.min_tokens == 24
    assert rest.params.extra_args is None and rest.cache_salt is None
    assert len(choice["logprobs"]["tokens"]) == 200
    assert choice["prompt_token_ids"] == prompt
    assert response.json()["usage"]["completion_tokens"] == 200


def test_a_streamed_request_switches_within_one_stream(app, http):
    prompt = token_prompt(200, salt=3)
    body = {
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": 100,
        "stream": True,
        "return_token_ids": True,
        "stream_options": {"include_usage": True},
    }
    with http.stream("POST", "/v1/completions", json=body) as response:
        assert response.headers["x-rope-table"] == "unscaled-then-scaled"
        events = [json.loads(e) for e in sse_events(response) if e != "[DONE]"]
    choices = [c for e in events for c in e["choices"]]
    tokens = [t for c in choices for t in c["token_ids"]]
    whole = complete(http, prompt, max_tokens=100, return_token_ids=True)
    assert tokens == whole.json()["choices"][0]["token_ids"] and len(tokens) == 100
    finishes = [c["finish_reason"] for c in choices if c["finish_reason"]]
    assert finishes == ["length"] and choices[-1]["finish_reason"] == "length"
    assert events[-1]["usage"]["completion_tokens"] == 100


def test_a_chat_request_without_max_tokens_starts_unscaled(app, http):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["x-rope-table"] == "unscaled-then-scaled"
    prompt = response.json()["usage"]["prompt_tokens"]
    assert response.json()["usage"]["completion_tokens"] == SERVED_CONTEXT - prompt


HELLO = [{"role": "user", "content": "hello"}]


@pytest.mark.parametrize(
    ("path", "body", "table"),
    [
        ("/v1/responses", {"input": "hello", "max_output_tokens": 8}, "unscaled"),
        ("/v1/responses", {"input": "hello"}, "unscaled-then-scaled"),
        ("/v1/messages", {"messages": HELLO, "max_tokens": 8}, "unscaled"),
        ("/v1/messages", {"messages": HELLO, "max_tokens": 512}, "unscaled-then-scaled"),
    ],
)
def test_the_responses_and_messages_apis_choose_tables_as_chat_does(app, http, path, body, table):
    response = http.post(path, json={"model": MODEL, **body})
    assert response.status_code == 200, response.text
    assert response.headers["x-rope-table"] == table


@pytest.mark.parametrize(
    "extra",
    [{"stop": ["."]}, {"n": 2}, {"presence_penalty": 0.5}],
    ids=["stop", "n", "presence-penalty"],
)
def test_a_request_a_switch_would_change_runs_scaled_from_the_start(app, http, extra):
    response = complete(http, token_prompt(100), max_tokens=300, **extra)
    assert response.headers["x-rope-table"] == "scaled"
    assert sent(app, response).cache_salt is None


def test_models_and_metrics_say_the_policy_and_count_by_table(app, http):
    (card,) = http.get("/v1/models").json()["data"]
    assert card["rope_policy"] == "per-request"
    assert card["trained_context"] == ORIGINAL_CONTEXT

    def count(table: str) -> float:
        for line in http.get("/metrics").text.splitlines():
            if line.startswith(f'resonance_engine_requests_total{{table="{table}"}}'):
                return float(line.split()[-1])
        return 0.0

    before = {table: count(table) for table in ("unscaled", "scaled")}
    complete(http, token_prompt(100), max_tokens=200)
    assert count("unscaled") == before["unscaled"] + 1
    assert count("scaled") == before["scaled"] + 1


def test_a_client_that_leaves_during_the_scaled_part_leaves_nothing_in_the_engine(app, http):
    def continuations() -> list[str]:
        return [i for i in app.engine.running if i.endswith(CONTINUATION)]

    app.engine.faults.step_seconds = 0.01
    body = {"model": MODEL, "prompt": token_prompt(200, salt=8), "max_tokens": 600, "stream": True}
    try:
        with http.stream("POST", "/v1/completions", json=body) as response:
            assert response.headers["x-rope-table"] == "unscaled-then-scaled"
            for _ in response.iter_lines():  # read on until the scaled part runs
                if continuations():
                    break
            (continuation,) = continuations()
    finally:
        app.engine.faults = Faults()
    wait_until(lambda: continuation in app.engine.aborted and not app.engine.running)


def test_a_deadline_during_the_scaled_part_aborts_it(tokenizer):
    engine = FakeEngine.of(tokenizer, SERVED_CONTEXT, ORIGINAL_CONTEXT, rope_policy=POLICY)
    engine.faults.step_seconds = 0.01  # 56 unscaled steps, then 544 scaled ones: past 1 s
    with app_server(engine, request_timeout=1) as slow:
        body = {"model": MODEL, "prompt": token_prompt(200, salt=9), "max_tokens": 600}
        answer = httpx.post(f"{slow.base_url}/v1/completions", json=body, timeout=10)
        assert answer.status_code == 504, answer.text
        wait_until(lambda: not engine.running)
        assert any(i.endswith(CONTINUATION) for i in engine.aborted)
