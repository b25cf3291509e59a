"""LoRA adapters made here with peft, served by vLLM through the server on the base's RoPE.

One server for the module: the plain tiny checkpoint extended to resonance_yarn x4 by flags,
one adapter given at start (--lora-module) and runtime loading allowed behind the API key.
"""

import concurrent.futures

import httpx
import pytest
import torch

from tests.helpers import (
    FACTOR,
    ORIGINAL_CONTEXT,
    SERVED_CONTEXT,
    keyed_client,
    prompt_logprobs,
    served,
    token_prompt,
    transformers_logprobs,
)

BASE, ADAPTER, KEY, RANK = "tiny-base", "tiny-long", "lora-key", 8


def make_adapter(checkpoint, out, rank: int, seed: int):
    """A peft adapter on q_proj and v_proj whose B matrices are not zero (peft's init: zero)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    get_peft_model(model, config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapter(plain_checkpoint, tmp_path_factory):
    return make_adapter(plain_checkpoint, tmp_path_factory.mktemp("adapter"), RANK, seed=1)


@pytest.fixture(scope="module")
def lora_server(plain_checkpoint, adapter, tmp_path_factory):
    with served(
        [
            "--model",
            str(plain_checkpoint),
            "--served-model-name",
            BASE,
            "--rope-type",
            "resonance_yarn",
            "--rope-factor",
            str(FACTOR),
            "--dtype",
            "float32",
            "--enforce-eager",
            "--api-key",
            KEY,
            "--lora-module",
            f"{ADAPTER}={adapter}",
            "--max-lora-rank",
            str(RANK),
            "--allow-runtime-lora",
        ],
        tmp_path_factory.mktemp("lora") / "server.log",
    ) as running:
        yield running


@pytest.fixture(scope="module")
def http(lora_server):
    with keyed_client(lora_server, KEY) as session:
        yield session


def served_scaling(checkpoint) -> dict:
    """The config entries the server's resonance_yarn x4 flags give the plain checkpoint."""
    from transformers import AutoConfig

    rope = AutoConfig.from_pretrained(checkpoint).rope_parameters
    rope_parameters = {
        **rope,
        "rope_type": "resonance_yarn",
        "factor": float(FACTOR),
        "original_max_position_embeddings": ORIGINAL_CONTEXT,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
    }
    return {"rope_parameters": rope_parameters, "max_position_embeddings": SERVED_CONTEXT}


def test_the_adapter_is_served_as_transformers_and_peft_compute_it(http, plain_checkpoint, adapter):
    """A 700-token prompt (past the 256 trained positions), float32 on both sides.

    They differ in kernels (vLLM's paged CPU attention, its LoRA path) and summation order:
    measured, mean 8e-5 and at most 1.4e-3 nats, as much as the base model alone differs from
    transformers (mean 9e-5, max 2.6e-3). The bounds (mean 5e-4, any token 1e-2) leave room
    for that and none for a missing adapter (the base is more than 1e-2 away on average).
    """
    ids = token_prompt(700, salt=3)
    served = prompt_logprobs(http, ADAPTER, ids)
    scaling = served_scaling(plain_checkpoint)
    expected = transformers_logprobs(plain_checkpoint, ids, adapter, **scaling)
    difference = (served - expected).abs()
    print(
        f"\nadapter served vs transformers+peft: mean {difference.mean():.2e}, "
        f"max {difference.max():.2e}"
    )
    assert difference.mean() < 5e-4 and difference.max() < 1e-2
    base = prompt_logprobs(http, BASE, ids)
    effect = (base - served).abs().mean()
    print(f"adapter vs base: mean {effect:.2e}")
    assert effect > 1e-2  # the adapter changes the model


def test_a_short_prompt_through_the_adapter_runs_on_the_unscaled_table(
    http, plain_checkpoint, adapter
):
    """Per-request RoPE (the server's default here) with LoRA: 200 tokens fit the trained 256,
    so the adapter is served as transformers + peft compute it on the plain checkpoint."""
    ids = token_prompt(200, salt=4)
    served = prompt_logprobs(http, ADAPTER, ids)
    difference = (served - transformers_logprobs(plain_checkpoint, ids, adapter)).abs()
    assert difference.mean() < 5e-4 and difference.max() < 1e-2


def test_adapter_greedy_text_differs_from_the_base(http):
    ids = token_prompt(40, salt=4)
    texts = {}
    for model in (BASE, ADAPTER):
        body = {"model": model, "prompt": ids, "max_tokens": 12, "temperature": 0}
        texts[model] = http.post("/v1/completions", json=body).json()["choices"][0]["text"]
    assert texts[BASE] != texts[ADAPTER]


def test_models_lists_the_adapter_with_its_parent(http):
    cards = {card["id"]: card for card in http.get("/v1/models").json()["data"]}
    assert cards[BASE]["parent"] is None
    assert cards[ADAPTER]["parent"] == BASE
    assert cards[ADAPTER]["rope_parameters"]["rope_type"] == "resonance_yarn"


def test_runtime_load_and_unload(http, lora_server, plain_checkpoint, tmp_path):
    second = make_adapter(plain_checkpoint, tmp_path / "second", 4, seed=2)
    body = {"lora_name": "second", "lora_path": str(second)}
    anonymous = httpx.post(f"{lora_server.base_url}/v1/load_lora_adapter", json=body)
    assert anonymous.status_code == 401
    assert http.post("/v1/load_lora_adapter", json=body).status_code == 200
    ids = token_prompt(30, salt=6)
    generated = http.post(
        "/v1/completions", json={"model": "second", "prompt": ids, "max_tokens": 4}
    )
    assert generated.status_code == 200 and generated.json()["model"] == "second"
    assert http.post("/v1/load_lora_adapter", json=body).status_code == 400  # loaded already
    assert http.post("/v1/unload_lora_adapter", json={"lora_name": "second"}).status_code == 200
    gone = http.post("/v1/completions", json={"model": "second", "prompt": ids, "max_tokens": 4})
    assert gone.status_code == 404
    assert http.post("/v1/unload_lora_adapter", json={"lora_name": "second"}).status_code == 404


def test_bad_adapters_are_refused_and_leave_nothing_behind(http, plain_checkpoint, tmp_path):
    too_wide = make_adapter(plain_checkpoint, tmp_path / "wide", 16, seed=3)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text('{"r": 4, "target_modules": ["q_proj"]}')
    for name, path, words in [
        ("wide", too_wide, "rank 16 is above this server's --max-lora-rank 8"),
        ("missing", tmp_path / "nothing-here", "no adapter at"),
        ("broken", broken, "could not be loaded"),
    ]:
        response = http.post(
            "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)}
        )
        assert response.status_code == 400, response.text
        assert words in response.json()["error"]["message"]
    names = [card["id"] for card in http.get("/v1/models").json()["data"]]
    assert names == [BASE, ADAPTER]
    body = {"model": ADAPTER, "prompt": "still serving", "max_tokens": 3}
    assert http.post("/v1/completions", json=body).status_code == 200


@pytest.mark.parametrize("model", [BASE, ADAPTER])
def test_concurrent_prompt_logprobs_with_lora_on_do_not_kill_the_engine(http, lora_server, model):
    """vLLM's CPU LoRA logits path crashes the engine on a batch of two requests when one asks
    for prompt log-probabilities (`server.lanes`); the server runs such a request alone, so
    both are answered and the server lives. No adapter needs to be named for the crash."""
    bodies = [
        {"model": model, "prompt": token_prompt(900, salt), "max_tokens": 1, "prompt_logprobs": 1}
        for salt in (1, 2)
    ]
    bodies.append(
        {
            "model": model,
            "prompt": token_prompt(900, 3),
            "max_tokens": 8,
            "echo": True,
            "logprobs": 0,
        }
    )
    bodies.append({"model": model, "prompt": token_prompt(300, 4), "max_tokens": 8})
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        responses = list(pool.map(lambda body: http.post("/v1/completions", json=body), bodies))
    assert [r.status_code for r in responses] == [200] * len(bodies), responses[0].text
    assert len(responses[0].json()["choices"][0]["prompt_logprobs"]) == 900
    assert lora_server.process.poll() is None
    assert http.get("/health").status_code == 200
