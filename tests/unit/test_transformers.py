"""The Resonance types as transformers sees them: RoPE init functions and config validation."""

import numpy as np
import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

import rope_plugins
from tests import reference as ref


@pytest.fixture(scope="module", autouse=True)
def plugins():
    rope_plugins.register()


def llama_config(**rope_parameters) -> LlamaConfig:
    return LlamaConfig(
        hidden_size=256,
        num_attention_heads=2,
        head_dim=128,
        max_position_embeddings=4096,
        rope_parameters={"rope_theta": 10000.0, **rope_parameters},
    )


def test_llama_rotary_embedding_uses_resonance_yarn():
    config = llama_config(
        rope_type="resonance_yarn", factor=8.0, original_max_position_embeddings=512
    )
    rotary = LlamaRotaryEmbedding(config)
    theta, mscale = ref.yarn(128, 1e4, 8, 512)
    np.testing.assert_allclose(rotary.inv_freq.double().numpy(), ref.resonance(theta), rtol=1e-6)
    assert rotary.attention_scaling == pytest.approx(mscale)
    positions = torch.arange(4096)[None]
    cos, _ = rotary(torch.zeros(1, dtype=torch.float32), positions)
    expected = ref.cos_sin(ref.resonance(theta), np.arange(4096), mscale)[:, :64]
    np.testing.assert_allclose(cos[0, :, :64].double().numpy(), expected, atol=5e-4)


def test_dynamic_type_is_updated_by_transformers_with_the_sequence_length():
    config = llama_config(rope_type="resonance_dynamic", factor=2.0)
    rotary = LlamaRotaryEmbedding(config)
    short = rotary.inv_freq.clone()
    rotary(torch.zeros(1), torch.arange(8192)[None])
    grown_base = 1e4 * (2 * 8192 / 4096 - 1) ** (128 / 126)
    np.testing.assert_allclose(short.double().numpy(), ref.resonance(ref.rope(128, 1e4)), rtol=1e-6)
    np.testing.assert_allclose(
        rotary.inv_freq.double().numpy(), ref.resonance(ref.rope(128, grown_base)), rtol=1e-6
    )


def test_bad_value_fails_config_creation_with_the_field_named():
    # transformers wraps the validator's error in its own class-validation error.
    with pytest.raises(Exception, match=r"rope_parameters\.beta_fast must be greater"):
        llama_config(
            rope_type="resonance_yarn",
            factor=4.0,
            original_max_position_embeddings=512,
            beta_fast=1,
            beta_slow=4,
        )
