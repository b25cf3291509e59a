"""Before rounding, each method's frequencies are vLLM's own; after it, vLLM builds our table.

These build vLLM's rotary embeddings directly (no engine) through its own `get_rope`.
"""

import numpy as np
import pytest
import torch
from vllm.config import VllmConfig, set_current_vllm_config
from vllm.model_executor.layers import rotary_embedding

import rope_plugins
from rope_plugins import frequencies as f
from rope_plugins.catalog import SERVABLE_TYPES, takes_factor
from rope_plugins.resonance import resonance_rope
from rope_plugins.vllm_rotary import ResonanceRotaryEmbedding
from server.plan import rope_override
from server.settings import Settings
from tests import reference as ref

HEAD, BASE, ORIGINAL, FACTOR = 128, 10000.0, 2048, 4.0


@pytest.fixture(scope="module", autouse=True)
def vllm_context():
    rope_plugins.register()
    with set_current_vllm_config(VllmConfig()):
        yield


def vllm_rope(rope_type: str, max_position: int = ORIGINAL, **params):
    params = {"rope_type": rope_type, "rope_theta": BASE, **params}
    return rotary_embedding.get_rope(HEAD, max_position, True, params, torch.float32)


def vllm_inv_freq(rope_type: str, max_position: int = ORIGINAL, **params) -> np.ndarray:
    rope = vllm_rope(rope_type, max_position, **params)
    argument = rope.scaling_factor if rope_type == "yarn" else rope.base
    return rope._compute_inv_freq(argument).double().numpy()


@pytest.mark.parametrize(
    ("rope_type", "params", "ours"),
    [
        ("default", {}, f.rope_inv_freq(HEAD, BASE)),
        ("ntk", {"factor": FACTOR}, f.ntk_inv_freq(HEAD, BASE, FACTOR)),
        ("ntk", {"factor": FACTOR, "mixed_b": 1.5}, f.ntk_inv_freq(HEAD, BASE, FACTOR, 1.5)),
        (
            "llama3",
            {
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": ORIGINAL,
            },
            f.llama3_inv_freq(HEAD, BASE, 8.0, 1.0, 4.0, ORIGINAL),
        ),
        (
            "yarn",
            {"factor": FACTOR, "original_max_position_embeddings": ORIGINAL, "beta_fast": 16},
            f.yarn_inv_freq(HEAD, BASE, FACTOR, ORIGINAL, beta_fast=16),
        ),
    ],
)
def test_unrounded_frequencies_are_vllms(rope_type, params, ours):
    np.testing.assert_allclose(vllm_inv_freq(rope_type, **params), ours.numpy(), rtol=2e-6)


def test_yarn_attention_factor_is_vllms():
    for extra in ({}, {"attention_factor": 1.3}, {"mscale": 1.0, "mscale_all_dim": 0.5}):
        params = {"factor": FACTOR, "original_max_position_embeddings": ORIGINAL, **extra}
        ours = f.yarn_attention_factor(
            FACTOR, extra.get("attention_factor"), extra.get("mscale"), extra.get("mscale_all_dim")
        )
        assert vllm_rope("yarn", **params).mscale == pytest.approx(ours, rel=1e-12)


def test_get_rope_builds_resonance_tables_and_leaves_other_types_alone():
    params = {"factor": FACTOR, "original_max_position_embeddings": ORIGINAL}
    ours = vllm_rope("resonance_yarn", **params)
    theirs = vllm_rope("yarn", **params)
    assert isinstance(ours, ResonanceRotaryEmbedding)
    assert isinstance(ours, rotary_embedding.RotaryEmbedding)
    assert type(theirs) is rotary_embedding.YaRNScalingRotaryEmbedding
    assert ours.cos_sin_cache.shape == theirs.cos_sin_cache.shape == (ORIGINAL * FACTOR, HEAD)
    theta, mscale = ref.yarn(HEAD, BASE, FACTOR, ORIGINAL)
    expected = ref.cos_sin(ref.resonance(theta), np.arange(ORIGINAL * int(FACTOR)), mscale)
    np.testing.assert_allclose(ours.cos_sin_cache.double().numpy(), expected, atol=2e-7, rtol=0)
    assert vllm_rope("resonance_yarn", **params) is ours  # shared between layers, like vLLM's


def test_linear_table_realises_the_scaled_wavelengths():
    """vLLM's linear scaling divides positions; the rounded wavelength is the scaled one."""
    ours = vllm_rope("resonance_linear", factor=FACTOR)
    theirs = vllm_rope("linear", factor=FACTOR)
    assert ours.cos_sin_cache.shape == theirs.cos_sin_cache.shape
    expected = ref.cos_sin(ref.resonance(ref.linear(HEAD, BASE, FACTOR)), np.arange(ORIGINAL * 4))
    np.testing.assert_allclose(ours.cos_sin_cache.double().numpy(), expected, atol=2e-7, rtol=0)


def test_forward_rotates_queries_with_the_resonance_table():
    params = {"factor": FACTOR, "original_max_position_embeddings": ORIGINAL}
    rope = vllm_rope("resonance_yarn", **params)
    positions = torch.tensor([0, 5, 3000, 8191])
    query = torch.randn(4, HEAD, generator=torch.Generator().manual_seed(0))
    key = query.clone()
    out_q, _ = rope.forward_native(positions, query.clone(), key)
    table = resonance_rope(
        {"rope_type": "resonance_yarn", **params}, HEAD, ORIGINAL
    ).cos_sin_table()
    cos, sin = table[positions].chunk(2, dim=-1)
    x1, x2 = query.double().chunk(2, dim=-1)
    expected = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    torch.testing.assert_close(out_q.double(), expected, atol=1e-5, rtol=1e-5)


def test_registering_twice_changes_nothing():
    before = rotary_embedding.get_rope
    rope_plugins.register()
    assert rotary_embedding.get_rope is before
    assert rotary_embedding.get_rope.__wrapped__.__module__.startswith("vllm")


def fake_get_rope(
    head_size,
    max_position,
    is_neox_style=True,
    rope_parameters=None,
    dtype=None,
    renamed_option=None,
):
    """vLLM's get_rope as a future version might spell it: an option renamed."""
    return ("vllm", renamed_option)


def test_other_types_reach_vllm_untouched_whatever_its_other_parameters():
    from rope_plugins.vllm_hooks import _wrap_get_rope

    wrapped = _wrap_get_rope(fake_get_rope)
    params = {"rope_type": "yarn", "factor": 2.0}
    assert wrapped(128, 4096, True, params, renamed_option=7) == ("vllm", 7)
    assert wrapped(128, 4096, rope_parameters=None, renamed_option=8) == ("vllm", 8)
    ours = wrapped(HEAD, ORIGINAL, True, {"rope_type": "resonance", "rope_theta": BASE})
    assert isinstance(ours, ResonanceRotaryEmbedding)


def test_a_get_rope_without_the_parameters_read_fails_at_register_naming_vllm():
    import vllm

    from rope_plugins.vllm_hooks import _wrap_get_rope

    def renamed(head_size, max_position, is_neox_style=True, rope_config=None, dtype=None):
        return None

    with pytest.raises(RuntimeError, match=rf"vLLM {vllm.__version__} .*rope_parameters"):
        _wrap_get_rope(renamed)


@pytest.mark.parametrize("rope_type", [t for t in SERVABLE_TYPES if takes_factor(t)])
def test_every_served_position_has_a_row_in_vllms_table(rope_type):
    """The config the server writes makes vLLM build a cos/sin row for each served position
    (vLLM's kernels do not check: a position past the table reads other memory)."""
    settings = Settings(model="m", rope_type=rope_type, rope_factor=FACTOR)
    checkpoint = {"rope_theta": BASE}
    extra = {"low_freq_factor": 1.0, "high_freq_factor": 4.0} if "llama3" in rope_type else {}
    override = rope_override(settings, checkpoint, ORIGINAL)
    params = {**override.rope_parameters, **extra}
    rope = rotary_embedding.get_rope(
        HEAD, override.max_position_embeddings, True, params, torch.float32
    )
    assert override.max_model_len == ORIGINAL * FACTOR
    assert rope.cos_sin_cache.shape[0] >= override.max_model_len


@pytest.mark.parametrize(
    ("rope_type", "theta"),
    [
        ("ntk", ref.ntk(HEAD, BASE, FACTOR)),
        # dynamic NTK at the served length, as the static table of resonance_dynamic
        ("dynamic", ref.rope(HEAD, BASE * (FACTOR * FACTOR - FACTOR + 1) ** (HEAD / (HEAD - 2)))),
    ],
)
def test_ntk_tables_hold_the_methods_frequencies_at_every_served_position(rope_type, theta):
    settings = Settings(model="m", rope_type=rope_type, rope_factor=FACTOR)
    override = rope_override(settings, {"rope_theta": BASE}, ORIGINAL)
    rope = rotary_embedding.get_rope(
        HEAD, override.max_position_embeddings, True, override.rope_parameters, torch.float32
    )
    positions = np.arange(override.max_model_len)
    expected = ref.cos_sin(theta, positions)
    table = rope.cos_sin_cache[: len(positions)].double().numpy()
    # vLLM computes these angles in float32: about 1e-3 rad off at position 8192
    np.testing.assert_allclose(table, expected, atol=2e-3, rtol=0)


def test_a_per_request_table_is_the_scaled_one_then_vllms_plain_rope_bit_for_bit():
    """Rows [S, S + L) are what an unscaled server of the checkpoint computes, so a shifted
    request runs exactly as on that server; rows [0, S) are the static table."""
    params = {"factor": FACTOR, "original_max_position_embeddings": ORIGINAL}
    served = int(ORIGINAL * FACTOR)
    scaled = vllm_rope("resonance_yarn", served, **params)
    both = vllm_rope("resonance_yarn", served, **params, unscaled_rows=ORIGINAL)
    plain = vllm_rope("default", ORIGINAL)
    assert type(plain).__name__ == "RotaryEmbedding"  # vLLM's own class
    assert both.cos_sin_cache.shape == (served + ORIGINAL, HEAD)
    assert torch.equal(both.cos_sin_cache[:served], scaled.cos_sin_cache)
    assert torch.equal(both.cos_sin_cache[served:], plain.cos_sin_cache)
