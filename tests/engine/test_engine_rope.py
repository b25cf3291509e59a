"""Resonance-YaRN inside a real vLLM engine, checked against references outside vLLM."""

import numpy as np
import pytest
import torch

import rope_plugins
from tests import reference as ref
from tests.helpers import FACTOR, ORIGINAL_CONTEXT, RESONANCE_YARN, SERVED_CONTEXT
from tests.worker_probe import rotary_tables

# A prompt 2.75x longer than the original context (and within the served one).
PROMPT_IDS = [3 + (7 * i) % 1990 for i in range(int(ORIGINAL_CONTEXT * 2.75))]


def hf_prompt_logprobs(checkpoint, rope_parameters=None) -> torch.Tensor:
    """Log-probability of each prompt token given the ones before it, from transformers."""
    from transformers import AutoConfig, AutoModelForCausalLM

    rope_plugins.register()
    config = AutoConfig.from_pretrained(checkpoint)
    if rope_parameters is not None:
        config.rope_parameters = rope_parameters
    model = AutoModelForCausalLM.from_pretrained(checkpoint, config=config, dtype=torch.float32)
    ids = torch.tensor([PROMPT_IDS])
    with torch.no_grad():
        logits = model.eval()(ids).logits[0, :-1].double()
    return torch.log_softmax(logits, dim=-1).gather(-1, ids[0, 1:, None])[:, 0]


@pytest.fixture(scope="module")
def vllm_prompt_logprobs(offline_llm) -> torch.Tensor:
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0)
    (result,) = offline_llm.generate([{"prompt_token_ids": PROMPT_IDS}], params, use_tqdm=False)
    values = [next(iter(step.values())).logprob for step in result.prompt_logprobs[1:]]
    return torch.tensor(values, dtype=torch.float64)


def test_served_context_is_factor_times_original(offline_llm):
    assert offline_llm.llm_engine.model_config.max_model_len == SERVED_CONTEXT


def test_cos_sin_table_in_the_worker_equals_reference(offline_llm):
    (tables,) = offline_llm.apply_model(rotary_tables)
    assert len(tables) == 1  # one table shared by every layer, as vLLM does
    name, table = tables[0]
    assert name == "ResonanceRotaryEmbedding"
    theta, mscale = ref.yarn(128, 1e4, FACTOR, ORIGINAL_CONTEXT)
    expected = ref.cos_sin(ref.resonance(theta), np.arange(SERVED_CONTEXT), mscale)
    np.testing.assert_allclose(np.asarray(table), expected, atol=2e-7, rtol=0)


def test_prompt_logprobs_match_transformers(resonance_checkpoint, vllm_prompt_logprobs):
    """vLLM and transformers run the same float32 weights with different kernels (paged CPU
    attention vs eager matmuls), so the summation order differs: about 1e-4 on average. This
    random-weight model is very confident (log-probabilities near -18), which magnifies that
    noise at a few tokens, so the bound on single tokens is 2e-2; Resonance against YaRN
    differs by whole units (see the next test)."""
    expected = hf_prompt_logprobs(resonance_checkpoint)
    difference = (vllm_prompt_logprobs - expected).abs()
    assert difference.mean() < 1e-3
    assert difference.max() < 2e-2


def test_prompt_logprobs_differ_from_plain_yarn(resonance_checkpoint, vllm_prompt_logprobs):
    yarn = hf_prompt_logprobs(resonance_checkpoint, {**RESONANCE_YARN, "rope_type": "yarn"})
    difference = (vllm_prompt_logprobs - yarn).abs()
    # Inside the original context the two differ only through the rounded short wavelengths;
    # beyond it, also through the interpolated ones.
    assert difference.mean() > 0.1
    assert difference[ORIGINAL_CONTEXT:].mean() > difference.mean() / 2
