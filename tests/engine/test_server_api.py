"""The real server process, driven with the official `openai` client and with httpx."""

import json

import openai
import pytest

from tests.helpers import (
    MODEL_NAME,
    ORIGINAL_CONTEXT,
    PROMPT,
    SERVED_CONTEXT,
    offline_greedy,
    sse_events,
    token_prompt,
)


def test_models_lists_the_served_model_with_its_rope(client):
    (model,) = client.models.list().data
    assert model.id == MODEL_NAME
    extra = model.model_extra
    assert extra["max_model_len"] == SERVED_CONTEXT
    assert extra["rope_parameters"]["rope_type"] == "resonance_yarn"
    assert extra["rope_parameters"]["factor"] == 4.0
    assert extra["rope_parameters"]["original_max_position_embeddings"] == ORIGINAL_CONTEXT


def test_long_prompt_greedy_equals_offline(client, offline_llm):
    ids = token_prompt(int(ORIGINAL_CONTEXT * 3))  # three times the trained context
    response = client.completions.create(model=MODEL_NAME, prompt=ids, max_tokens=16, temperature=0)
    assert response.usage.prompt_tokens == len(ids)
    assert response.choices[0].text == offline_greedy(offline_llm, {"prompt_token_ids": ids}, 16)


def test_prompt_beyond_the_served_context_is_rejected(client):
    ids = token_prompt(SERVED_CONTEXT + 76)
    with pytest.raises(openai.BadRequestError) as error:
        client.completions.create(model=MODEL_NAME, prompt=ids, max_tokens=4)
    assert error.value.status_code == 400
    message = error.value.body["message"]
    assert str(SERVED_CONTEXT) in message and str(SERVED_CONTEXT + 76) in message


def test_max_tokens_that_cannot_fit_is_rejected(client):
    ids = token_prompt(SERVED_CONTEXT - 10)
    with pytest.raises(openai.BadRequestError) as error:
        client.completions.create(model=MODEL_NAME, prompt=ids, max_tokens=20)
    assert error.value.body["param"] == "max_tokens"
    assert f"{SERVED_CONTEXT - 10} in the prompt" in error.value.body["message"]


def test_streamed_completion_equals_the_whole_one(client):
    whole = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=20, temperature=0)
    chunks = list(
        client.completions.create(
            model=MODEL_NAME,
            prompt=PROMPT,
            max_tokens=20,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    assert len([c for c in chunks if c.choices]) > 2  # really streamed, token by token
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20
    assert chunks[-2].choices[0].finish_reason == "length"


def test_stream_is_server_sent_events_ending_with_done(http):
    body = {"model": MODEL_NAME, "prompt": PROMPT, "max_tokens": 5, "stream": True}
    with http.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    for event in events[:-1]:
        assert json.loads(event)["object"] == "text_completion"


def test_chat_renders_the_llama2_template(client, http):
    messages = [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "Hello, how long is the river?"},
    ]
    response = client.chat.completions.create(
        model=MODEL_NAME, messages=messages, max_tokens=12, temperature=0
    )
    assert response.object == "chat.completion"
    assert response.choices[0].message.role == "assistant"
    rendered = (
        "<s>[INST] <<SYS>>\nYou answer briefly.\n<</SYS>>\n\nHello, how long is the river? [/INST]"
    )
    tokens = http.post(
        "/tokenize", json={"model": MODEL_NAME, "prompt": rendered, "add_special_tokens": False}
    ).json()
    assert response.usage.prompt_tokens == tokens["count"]
    streamed = client.chat.completions.create(
        model=MODEL_NAME, messages=messages, max_tokens=12, temperature=0, stream=True
    )
    chunks = list(streamed)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == response.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == response.choices[0].finish_reason


def test_chat_rejects_roles_out_of_order(client):
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(
            model=MODEL_NAME,
            messages=[{"role": "assistant", "content": "hi"}, {"role": "user", "content": "x"}],
        )
    assert "alternate" in error.value.body["message"]


def test_echo_with_logprobs_gives_prompt_logprobs_like_offline(client, offline_llm):
    from vllm import SamplingParams

    ids = token_prompt(300, salt=1)
    response = client.completions.create(
        model=MODEL_NAME, prompt=ids, max_tokens=3, temperature=0, echo=True, logprobs=1
    )
    logprobs = response.choices[0].logprobs
    assert len(logprobs.tokens) == len(ids) + 3
    assert logprobs.token_logprobs[0] is None
    assert logprobs.text_offset == sorted(logprobs.text_offset)
    params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0)
    (offline,) = offline_llm.generate([{"prompt_token_ids": ids}], params, use_tqdm=False)
    expected = [
        step[token].logprob
        for token, step in zip(ids[1:], offline.prompt_logprobs[1:], strict=True)
    ]
    served = logprobs.token_logprobs[1 : len(ids)]
    assert served == pytest.approx(expected, abs=1e-4)
    for top, chosen in zip(
        logprobs.top_logprobs[len(ids) :], logprobs.token_logprobs[len(ids) :], strict=True
    ):
        assert max(top.values()) == pytest.approx(chosen)  # greedy picks the most likely


def test_chat_logprobs(client):
    response = client.chat.completions.create(
        model=MODEL_NAME,
        messages=[{"role": "user", "content": "Count"}],
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    content = response.choices[0].logprobs.content
    assert len(content) == response.usage.completion_tokens
    for item in content:
        assert len(item.top_logprobs) == 3
        assert item.logprob == pytest.approx(item.top_logprobs[0].logprob)


def test_n_choices_and_several_prompts(client):
    response = client.completions.create(
        model=MODEL_NAME,
        prompt=[PROMPT, "Hello"],
        max_tokens=6,
        n=3,
        temperature=1.0,
        seed=7,
        extra_body={"ignore_eos": True},
    )
    assert sorted(c.index for c in response.choices) == list(range(6))
    assert response.usage.completion_tokens == 6 * 6
    texts = {c.text for c in response.choices}
    assert len(texts) > 1  # sampled, not six copies


def test_stop_sequence_ends_the_text_before_it(client):
    whole = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=30, temperature=0)
    text = whole.choices[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    cut = client.completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=30, temperature=0, stop=[stop]
    )
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == text[: text.index(stop)]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "other-model", "prompt": "x"}, 404, "model"),
        ({"model": MODEL_NAME, "prompt": "x", "temperature": -1}, 400, "temperature"),
        ({"model": MODEL_NAME, "prompt": "x", "n": 0}, 400, "n"),
        ({"model": MODEL_NAME, "prompt": [5, 99999]}, 400, "prompt"),
        ({"model": MODEL_NAME, "prompt": ""}, 400, "prompt"),
        ({"model": MODEL_NAME}, 400, "prompt"),
        ({"model": MODEL_NAME, "prompt": "x", "bogus": 1}, 400, "bogus"),
    ],
)
def test_bad_requests_get_openai_errors(http, body, status, param):
    response = http.post("/v1/completions", json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert error["message"]


def test_tokenize_and_detokenize(http):
    tokens = http.post("/tokenize", json={"prompt": PROMPT}).json()
    assert tokens["count"] == len(tokens["tokens"]) and tokens["max_model_len"] == SERVED_CONTEXT
    text = http.post("/detokenize", json={"tokens": tokens["tokens"][1:]})
    assert text.json()["prompt"] == PROMPT


def test_health_and_version(http):
    assert http.get("/health").status_code == 200
    version = http.get("/version").json()
    assert version["version"] and version["vllm"].startswith("0.32")


def test_metrics_expose_the_documented_names(http, client):
    client.completions.create(model=MODEL_NAME, prompt=token_prompt(600), max_tokens=5)
    text = http.get("/metrics").text
    for name in (
        'resonance_requests_total{endpoint="/v1/completions",status="200"}',
        "resonance_time_to_first_token_seconds_bucket",
        "resonance_inter_token_latency_seconds_bucket",
        "resonance_e2e_request_latency_seconds_bucket",
        'resonance_request_prompt_tokens_bucket{le="1024.0"}',
        "resonance_request_generation_tokens_bucket",
        "resonance_num_requests_running",
        "resonance_num_requests_waiting",
        "resonance_kv_cache_usage_ratio",
        'resonance_rope_info{factor="4.0",max_model_len="1024",'
        'original_max_position_embeddings="256",rope_type="resonance_yarn"} 1.0',
        "vllm:num_requests_running",
    ):
        assert name in text, name
    # The 600-token prompt landed in the (500, 1000] bucket.
    le_500 = _sample(text, 'resonance_request_prompt_tokens_bucket{le="500.0"}')
    le_1000 = _sample(text, 'resonance_request_prompt_tokens_bucket{le="1000.0"}')
    assert le_1000 > le_500


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


def test_streamed_echo_starts_with_the_prompt(client):
    whole = client.completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=10, temperature=0, echo=True
    )
    assert whole.choices[0].text.startswith(PROMPT)
    chunks = client.completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=10, temperature=0, echo=True, stream=True
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text


def test_streamed_logprob_offsets_continue_across_chunks(http):
    """text_offset counts from the start of the choice's text in every chunk, as whole."""
    body = {
        "model": MODEL_NAME,
        "prompt": PROMPT,
        "max_tokens": 12,
        "temperature": 0,
        "logprobs": 1,
        "echo": True,
        "ignore_eos": True,
    }
    whole = http.post("/v1/completions", json=body).json()["choices"][0]
    with http.stream("POST", "/v1/completions", json=body | {"stream": True}) as response:
        chunks = [json.loads(event) for event in sse_events(response) if event != "[DONE]"]
    offsets, text = [], ""
    for chunk in chunks:
        choice = chunk["choices"][0]
        offsets += choice["logprobs"]["text_offset"]
        text += choice["text"]
    assert len(chunks) > 2
    assert text == whole["text"]
    assert offsets == whole["logprobs"]["text_offset"]
    assert offsets == sorted(offsets) and offsets[-1] > len(PROMPT)


def test_every_route_is_counted_under_its_own_label(server, http):
    """The labels come from the app's routes: each path of the OpenAPI schema, called once,
    shows up in resonance_requests_total as itself, and an unknown path as 'other'."""
    paths = http.get("/openapi.json").json()["paths"]
    for path, operations in paths.items():
        method = "post" if "post" in operations else "get"
        http.request(method.upper(), path, json={} if method == "post" else None)
    http.get("/no/such/route")
    text = http.get("/metrics").text
    counted = {
        line.split('endpoint="', 1)[1].split('"', 1)[0]
        for line in text.splitlines()
        if line.startswith("resonance_requests_total{")
    }
    assert set(paths) <= counted
    assert "other" in counted
