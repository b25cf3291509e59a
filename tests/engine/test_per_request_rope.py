"""Per-request RoPE tables on the real engine: the session server (resonance_yarn x4 by flags,
so per-request by default) against a server of the same checkpoint with no scaling and one
with static Resonance-YaRN x4, float32.

Tolerance: the per-request server runs the very kernels and table rows of the reference
(the unscaled rows are vLLM's own plain table), so prompt log-probabilities are compared at
1e-5 alone and 1e-4 under concurrent load (batch composition changes the order of CPU
reductions, as in the tensor-parallel tests), and greedy tokens exactly.
"""

import concurrent.futures

import httpx
import pytest
import torch

from tests.helpers import (
    API_KEY,
    FACTOR,
    MODEL_NAME,
    ORIGINAL_CONTEXT,
    keyed_client,
    prompt_logprobs,
    served,
    token_prompt,
)

ALONE, LOADED = 1e-5, 1e-4
SHORT_LENGTHS = [8, 64, 200, ORIGINAL_CONTEXT - 1]  # + the 1 generated token: at most L
LONG_LENGTHS = [ORIGINAL_CONTEXT, 600, 1000]


def reference_server(plain_checkpoint, tmp_path_factory, *rope: str):
    flags = [
        *("--model", str(plain_checkpoint), "--served-model-name", MODEL_NAME),
        *("--dtype", "float32", "--enforce-eager", "--max-num-seqs", "8"),
        *("--api-key", API_KEY, *rope),
    ]
    return served(flags, tmp_path_factory.mktemp("reference") / "server.log")


@pytest.fixture(scope="module")
def unscaled(plain_checkpoint, tmp_path_factory):
    with (
        reference_server(plain_checkpoint, tmp_path_factory, "--rope-type", "none") as running,
        keyed_client(running, API_KEY) as http,
    ):
        yield http


@pytest.fixture(scope="module")
def static(plain_checkpoint, tmp_path_factory):
    scaling = ("--rope-type", "resonance_yarn", "--rope-factor", str(FACTOR))
    with (
        reference_server(
            plain_checkpoint, tmp_path_factory, *scaling, "--rope-policy", "static"
        ) as running,
        keyed_client(running, API_KEY) as http,
    ):
        yield http


def greedy(http: httpx.Client, ids: list[int], max_tokens: int) -> tuple[list[int], str]:
    """The greedy token ids (whatever the model would stop at) and the table header."""
    body = {
        "model": MODEL_NAME,
        "prompt": ids,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "return_token_ids": True,
    }
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["token_ids"], response.headers["x-rope-table"]


def table_of(http: httpx.Client, ids: list[int]) -> str:
    body = {"model": MODEL_NAME, "prompt": ids, "max_tokens": 1}
    return http.post("/v1/completions", json=body).headers["x-rope-table"]


def test_the_server_says_its_policy(http, static):
    (card,) = http.get("/v1/models").json()["data"]
    assert card["rope_policy"] == "per-request" and card["trained_context"] == ORIGINAL_CONTEXT
    assert static.get("/v1/models").json()["data"][0]["rope_policy"] == "static"


@pytest.mark.parametrize("length", SHORT_LENGTHS)
def test_a_prompt_that_fits_the_trained_length_scores_as_the_unscaled_model(
    http, unscaled, static, length
):
    ids = token_prompt(length, salt=length)
    ours, plain = prompt_logprobs(http, MODEL_NAME, ids), prompt_logprobs(unscaled, MODEL_NAME, ids)
    assert table_of(http, ids) == "unscaled"
    assert (ours - plain).abs().max() <= ALONE
    if length > 32:  # (the first positions' tables agree; past them the tables differ)
        assert (ours - prompt_logprobs(static, MODEL_NAME, ids)).abs().max() > 1e-2


@pytest.mark.parametrize("length", LONG_LENGTHS)
def test_a_prompt_past_the_trained_length_scores_as_the_static_server(http, static, length):
    ids = token_prompt(length, salt=length)
    ours, scaled = prompt_logprobs(http, MODEL_NAME, ids), prompt_logprobs(static, MODEL_NAME, ids)
    assert table_of(http, ids) == "scaled"
    assert (ours - scaled).abs().max() <= ALONE


def test_greedy_tokens_equal_each_tables_reference(http, unscaled, static):
    short, long = token_prompt(40, salt=5), token_prompt(400, salt=6)
    assert greedy(http, short, 100) == (greedy(unscaled, short, 100)[0], "unscaled")
    assert greedy(http, long, 40) == (greedy(static, long, 40)[0], "scaled")


def test_every_choice_of_n_keeps_the_requests_table(http, unscaled):
    """vLLM fans n choices out inside the engine: each sampled token's (raw) log-probability
    is the unscaled model's, teacher-forced on the same tokens."""
    short = token_prompt(60, salt=31)
    body = {"model": MODEL_NAME, "prompt": short, "max_tokens": 20, "temperature": 1.0, "n": 2}
    body |= {"seed": 7, "logprobs": 0, "ignore_eos": True, "return_token_ids": True}
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 200 and response.headers["x-rope-table"] == "unscaled"
    for choice in response.json()["choices"]:
        ids = choice["token_ids"]
        got = torch.tensor(choice["logprobs"]["token_logprobs"], dtype=torch.float64)
        want = prompt_logprobs(unscaled, MODEL_NAME, short + ids)[-len(ids) :]
        assert (got - want).abs().max() <= LOADED


def test_chunked_prefill_keeps_each_requests_table(
    plain_checkpoint, tmp_path_factory, unscaled, static
):
    """Prompts prefilled 32 tokens a step, several requests in each step: every chunk of a
    request is shifted, or not, as the whole request."""
    scaling = ("--rope-type", "resonance_yarn", "--rope-factor", str(FACTOR))
    chunks = ("--max-num-batched-tokens", "32", "--long-prefill-token-threshold", "16")
    cases = [(token_prompt(n, salt=300 + n), n < ORIGINAL_CONTEXT) for n in (200, 600, 90, 380)]
    with (
        reference_server(plain_checkpoint, tmp_path_factory, *scaling, *chunks) as running,
        keyed_client(running, API_KEY) as chunked,
        concurrent.futures.ThreadPoolExecutor(len(cases)) as pool,
    ):
        scores = list(pool.map(lambda case: prompt_logprobs(chunked, MODEL_NAME, case[0]), cases))
    for (ids, short), got in zip(cases, scores, strict=True):
        want = prompt_logprobs(unscaled if short else static, MODEL_NAME, ids)
        assert (got - want).abs().max() <= LOADED


def test_mixed_concurrent_traffic_gives_every_request_its_own_tables_answer(http, unscaled, static):
    """Short and long requests at once, so that the engine batches them together."""
    cases = [
        (token_prompt(length, salt=100 + i), length < ORIGINAL_CONTEXT)
        for i, length in enumerate([30, 700, 120, 400, 250, 900, 60, 300] * 2)
    ]
    expected = [
        prompt_logprobs(unscaled if short else static, MODEL_NAME, ids) for ids, short in cases
    ]
    expected_greedy = [greedy(unscaled if short else static, ids, 6)[0] for ids, short in cases]
    with concurrent.futures.ThreadPoolExecutor(len(cases)) as pool:
        scores = list(pool.map(lambda case: prompt_logprobs(http, MODEL_NAME, case[0]), cases))
        tokens = list(pool.map(lambda case: greedy(http, case[0], 6)[0], cases))
    for got, want in zip(scores, expected, strict=True):
        assert (got - want).abs().max() <= LOADED
    assert tokens == expected_greedy


def cached(http: httpx.Client, ids: list[int]) -> tuple[int, str]:
    body = {"model": MODEL_NAME, "prompt": ids, "max_tokens": 1}
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    details = response.json()["usage"]["prompt_tokens_details"]
    return details["cached_tokens"], response.headers["x-rope-table"]


@pytest.fixture(scope="module")
def wide(plain_checkpoint, tmp_path_factory):
    """Per-request with a trained length of 1024 (S = 4096), so that a short request holds a
    600-token prefix; only the cache is looked at here (the weights are random anyway)."""
    scaling = ("--rope-type", "resonance_yarn", "--rope-factor", str(FACTOR))
    with (
        reference_server(
            plain_checkpoint,
            tmp_path_factory,
            *scaling,
            "--original-max-position-embeddings",
            "1024",
        ) as running,
        keyed_client(running, API_KEY) as http,
    ):
        yield http


def test_a_short_and_a_long_request_never_share_prefix_cache_blocks(wide, static):
    """A 600-token prefix: the first long request reuses nothing of the short one's blocks,
    the second of each kind its own table's."""
    prefix = token_prompt(600, salt=77)
    short = [prefix + token_prompt(100, salt=s) for s in (1, 2)]  # 701 <= 1024: unscaled
    long = [prefix + token_prompt(600, salt=s) for s in (3, 4)]  # 1201 > 1024: scaled
    assert cached(wide, short[0]) == (0, "unscaled")
    assert cached(wide, long[0]) == (0, "scaled")
    reused_short, table = cached(wide, short[1])
    assert table == "unscaled" and 0 < reused_short <= 600
    reused_long, table = cached(wide, long[1])
    assert table == "scaled" and 0 < reused_long <= 600
    # a static server (served 1024) shares the prefix between any two requests
    cached(static, short[0])
    assert cached(static, prefix + token_prompt(200, salt=5))[0] > 0


def test_a_request_that_outgrows_the_trained_length_goes_on_as_the_static_server_would(
    http, unscaled, static
):
    """Prompt 100 + 300 tokens: the first 156 as the unscaled model, the rest as the static
    server given the prompt and those 156 tokens; whole and streamed alike."""
    prompt = token_prompt(100, salt=9)
    tokens, table = greedy(http, prompt, 300)
    assert table == "unscaled-then-scaled" and len(tokens) == 300
    head = greedy(unscaled, prompt, ORIGINAL_CONTEXT - 100)[0]
    assert tokens[:156] == head
    assert tokens[156:] == greedy(static, prompt + head, 144)[0]
    body = {
        "model": MODEL_NAME,
        "prompt": prompt,
        "max_tokens": 300,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "return_token_ids": True,
    }
    streamed, finishes = [], []
    with http.stream("POST", "/v1/completions", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                (choice,) = httpx.Response(200, content=line[6:]).json()["choices"]
                streamed += choice["token_ids"]
                finishes += [choice["finish_reason"]] if choice["finish_reason"] else []
    assert streamed == tokens and finishes == ["length"]


def test_served_log_probabilities_are_float64_close_to_transformers_for_each_table(
    http, plain_checkpoint
):
    """An independent reference: transformers on the plain checkpoint (unscaled), and with
    the registered resonance_yarn (scaled). Different kernels, so the bounds of
    test_engine_rope.py (mean 1e-3, any token 2e-2); the two tables differ by whole units."""
    from tests.helpers import RESONANCE_YARN, transformers_logprobs

    short, long = token_prompt(200, salt=21), token_prompt(700, salt=22)
    plain = transformers_logprobs(plain_checkpoint, short)
    scaled = transformers_logprobs(
        plain_checkpoint,
        long,
        rope_parameters=RESONANCE_YARN,
        max_position_embeddings=ORIGINAL_CONTEXT * int(FACTOR),
    )
    for ids, expected in ((short, plain), (long, scaled)):
        difference = (prompt_logprobs(http, MODEL_NAME, ids) - expected).abs()
        assert difference.mean() < 1e-3 and difference.max() < 2e-2
