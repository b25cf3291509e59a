"""Every Resonance type's frequency math against the float64 reference (tests/reference.py)."""

import itertools
import math

import numpy as np
import pytest
import torch

from rope_plugins import frequencies as f
from rope_plugins.catalog import served_max_positions
from rope_plugins.resonance import resonance_rope
from tests import reference as ref

HEAD_SIZES = (64, 128)
BASES = (1e4, 5e5)
FACTORS = (1, 2, 4, 8, 16)
ORIGINALS = (2048, 4096)
GRID = list(itertools.product(HEAD_SIZES, BASES, FACTORS, ORIGINALS))


def yarn_params(base: float, factor: float, original: int, **extra: object) -> dict:
    return {
        "rope_type": "resonance_yarn",
        "rope_theta": base,
        "factor": float(factor),
        "original_max_position_embeddings": original,
        **extra,
    }


@pytest.mark.parametrize(("dim", "base", "factor", "original"), GRID)
def test_resonance_yarn_matches_reference(dim, base, factor, original):
    theta, mscale = ref.yarn(dim, base, factor, original)
    rope = resonance_rope(yarn_params(base, factor, original), dim, original * factor)
    np.testing.assert_allclose(rope.inv_freq.numpy(), ref.resonance(theta), rtol=1e-12)
    assert rope.attention_factor == pytest.approx(mscale, rel=1e-12)
    assert rope.max_positions == original * factor


@pytest.mark.parametrize(("dim", "base", "factor", "original"), GRID)
def test_scaled_methods_match_reference(dim, base, factor, original):
    cases = {
        "resonance_linear": ref.linear(dim, base, factor),
        "resonance_ntk": ref.ntk(dim, base, factor),
        "resonance_llama3": ref.llama3(dim, base, factor, 1.0, 4.0, original),
    }
    for rope_type, theta in cases.items():
        params = {
            "rope_type": rope_type,
            "rope_theta": base,
            "factor": float(factor),
            "original_max_position_embeddings": original,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
        }
        rope = resonance_rope(params, dim, original)
        np.testing.assert_allclose(
            rope.inv_freq.numpy(), ref.resonance(theta), rtol=1e-12, err_msg=rope_type
        )


@pytest.mark.parametrize(("dim", "base"), itertools.product(HEAD_SIZES, BASES))
def test_plain_resonance_matches_reference(dim, base):
    rope = resonance_rope({"rope_type": "resonance", "rope_theta": base}, dim, 4096)
    np.testing.assert_allclose(
        rope.inv_freq.numpy(), ref.resonance(ref.rope(dim, base)), rtol=1e-12
    )
    assert rope.attention_factor == 1.0


def test_llama2_pair_two_rounds_from_8_38_to_8():
    # The paper's example of the largest relative change: pair 2 of LLaMA2 (d=128, b=1e4).
    rope = resonance_rope({"rope_type": "resonance"}, 128, 4096)
    assert 2 * math.pi / ref.rope(128, 1e4)[2] == pytest.approx(8.3788, abs=1e-4)
    assert rope.wavelengths[2].item() == 8.0


@pytest.mark.parametrize(("dim", "base", "factor", "original"), GRID)
def test_wavelengths_are_integers_within_half_of_unrounded(dim, base, factor, original):
    theta, _ = ref.yarn(dim, base, factor, original)
    rope = resonance_rope(yarn_params(base, factor, original), dim, original * factor)
    wavelengths = rope.wavelengths.numpy()
    np.testing.assert_array_equal(wavelengths, np.round(wavelengths))
    assert np.all(np.abs(wavelengths - 2 * math.pi / theta) <= 0.5)
    np.testing.assert_allclose(2 * math.pi / rope.inv_freq.numpy(), wavelengths, rtol=1e-13)


@pytest.mark.parametrize(
    ("dim", "base", "original"), itertools.product(HEAD_SIZES, BASES, ORIGINALS)
)
def test_resonance_yarn_with_factor_one_is_resonance(dim, base, original):
    yarn = resonance_rope(yarn_params(base, 1, original), dim, original)
    plain = resonance_rope({"rope_type": "resonance", "rope_theta": base}, dim, original)
    torch.testing.assert_close(yarn.inv_freq, plain.inv_freq, rtol=0, atol=0)
    assert yarn.attention_factor == plain.attention_factor == 1.0


@pytest.mark.parametrize(("dim", "factor"), [(128, 4), (128, 8), (64, 16)])
def test_pre_critical_features_repeat_with_their_wavelength(dim, factor):
    """Theorem 1, from the frequencies alone: a pre-critical pair's feature at n equals its
    feature at n mod wavelength (angles in float64 as t * theta, not as the table builds them)."""
    original = 4096
    rope = resonance_rope(yarn_params(1e4, factor, original), dim, original * factor)
    inv_freq = rope.inv_freq.numpy()
    pre_critical = np.flatnonzero(2 * np.pi / inv_freq < original)
    assert len(pre_critical) > 0
    far = np.arange(original * factor - 2000, original * factor)  # far beyond training length
    for pair in pre_critical:
        wavelength = round(2 * np.pi / inv_freq[pair])
        np.testing.assert_allclose(2 * np.pi / inv_freq[pair], wavelength, rtol=0, atol=1e-9)
        seen = far % wavelength  # a position inside the training length
        at_far = ref.cos_sin(inv_freq[pair : pair + 1], far)
        at_seen = ref.cos_sin(inv_freq[pair : pair + 1], seen)
        np.testing.assert_allclose(at_far, at_seen, rtol=0, atol=1e-9)


def test_table_repeats_bit_for_bit():
    rope = resonance_rope(yarn_params(1e4, 8, 4096), 128, 4096 * 8)
    table = rope.cos_sin_table().float().numpy()
    for pair in np.flatnonzero(rope.wavelengths.numpy() < 4096)[:8]:
        wavelength = int(rope.wavelengths[pair])
        far = np.arange(30000, 32768)
        np.testing.assert_array_equal(table[far, pair], table[far % wavelength, pair])


def test_table_matches_float64_reference_to_float32_precision():
    dim, factor, original = 128, 8, 4096
    theta, mscale = ref.yarn(dim, 1e4, factor, original)
    rope = resonance_rope(yarn_params(1e4, factor, original), dim, original * factor)
    positions = np.arange(original * factor)
    expected = ref.cos_sin(ref.resonance(theta), positions, mscale)
    np.testing.assert_allclose(rope.cos_sin_table().numpy(), expected, atol=1e-9, rtol=0)
    # Stored in float32 the table stays within float32 rounding, even near 32K positions.
    np.testing.assert_allclose(
        rope.cos_sin_table().float().numpy(), expected, atol=2 * mscale * 2**-24, rtol=0
    )


def test_dynamic_is_served_as_dynamic_ntk_at_the_served_length():
    """A static table (vLLM's) is the one dynamic NTK gives a sequence of the served length."""
    rope = resonance_rope({"rope_type": "resonance_dynamic", "factor": 4.0}, 128, 2048)
    assert rope.max_positions == 8192
    base = 1e4 * (4 * 8192 / 2048 - 3) ** (128 / 126)
    expected = ref.resonance(ref.rope(128, base))
    np.testing.assert_allclose(rope.inv_freq.numpy(), expected, rtol=1e-12)
    trained = {"rope_type": "resonance_dynamic", "factor": 2.0, "max_trained_positions": 1024}
    rope = resonance_rope(trained, 64, 2048)
    base = 1e4 * (2 * 4096 / 1024 - 1) ** (64 / 62)
    expected = ref.resonance(ref.rope(64, base))
    np.testing.assert_allclose(rope.inv_freq.numpy(), expected, rtol=1e-12)


def test_dynamic_grows_the_base_with_the_sequence_length():
    params = {"rope_type": "resonance_dynamic", "factor": 4.0}
    short = resonance_rope(params, 128, 2048, seq_len=2048)
    long = resonance_rope(params, 128, 2048, seq_len=8192)
    base = 1e4 * (4 * 8192 / 2048 - 3) ** (128 / 126)
    np.testing.assert_allclose(
        long.inv_freq.numpy(), ref.resonance(ref.rope(128, base)), rtol=1e-12
    )
    np.testing.assert_allclose(
        short.inv_freq.numpy(), ref.resonance(ref.rope(128, 1e4)), rtol=1e-12
    )


@pytest.mark.parametrize(
    ("params", "max_position", "served"),
    [
        ({"rope_type": "resonance"}, 4096, 4096),
        ({"rope_type": "resonance_linear", "factor": 4.0}, 4096, 16384),
        (
            {
                "rope_type": "resonance_yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 4096,
            },
            4096,
            16384,
        ),
        (
            {
                "rope_type": "resonance_yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 4096,
            },
            16384,
            16384,
        ),
    ],
)
def test_served_length(params, max_position, served):
    assert served_max_positions(params, max_position) == served


def test_yarn_inv_freq_handles_no_truncation():
    theta, _ = ref.yarn(128, 1e4, 4, 4096, truncate=False)
    np.testing.assert_allclose(
        f.yarn_inv_freq(128, 1e4, 4, 4096, truncate=False).numpy(), theta, rtol=1e-12
    )
