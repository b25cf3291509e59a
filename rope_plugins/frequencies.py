"""Inverse frequencies of RoPE and its scaling methods, and the Resonance rounding.

Pure functions over float64 tensors, importable without vLLM. Each scaling method computes
its inverse frequencies the way vLLM's rotary embedding of the same name does (which for YaRN
and llama3 is also how Hugging Face transformers does it); `round_wavelengths` is the
Resonance rule (arXiv 2403.00071) applied to whatever a method produced.
"""

import math

import torch

TWO_PI = 2 * math.pi


def rope_inv_freq(dim: int, base: float) -> torch.Tensor:
    """theta_i = base ** (-2i / dim) for the dim / 2 rotary pairs."""
    return 1.0 / base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)


def linear_inv_freq(dim: int, base: float, factor: float) -> torch.Tensor:
    """Position interpolation: every frequency divided by the factor."""
    return rope_inv_freq(dim, base) / factor


def ntk_inv_freq(
    dim: int, base: float, factor: float, mixed_b: float | None = None
) -> torch.Tensor:
    """Fixed NTK-aware scaling, and its "mixed" variant when ``mixed_b`` is given."""
    if mixed_b is None:
        return rope_inv_freq(dim, base * factor) / factor ** (2 / dim)
    a = math.log(factor) / (dim / 2) ** mixed_b
    pair = torch.arange(1, dim // 2 + 1, dtype=torch.float64)
    return rope_inv_freq(dim, base) / torch.exp(a * pair**mixed_b)


def dynamic_ntk_inv_freq(
    dim: int, base: float, factor: float, seq_len: float, trained_len: float
) -> torch.Tensor:
    """Dynamic NTK: the base grows with the sequence length it is computed for."""
    scaled_base = base * ((factor * seq_len / trained_len) - (factor - 1)) ** (dim / (dim - 2))
    return rope_inv_freq(dim, scaled_base)


def llama3_inv_freq(
    dim: int,
    base: float,
    factor: float,
    low_freq_factor: float,
    high_freq_factor: float,
    original_max_position: int,
) -> torch.Tensor:
    """Llama 3.1 scaling: long wavelengths interpolated, short kept, a smooth blend between."""
    inv_freq = rope_inv_freq(dim, base)
    wavelength = TWO_PI / inv_freq
    low_freq_wavelength = original_max_position / low_freq_factor
    high_freq_wavelength = original_max_position / high_freq_factor
    if low_freq_factor != high_freq_factor:
        smooth = (original_max_position / wavelength - low_freq_factor) / (
            high_freq_factor - low_freq_factor
        )
    else:
        smooth = torch.zeros_like(wavelength)
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    return torch.where(
        wavelength < high_freq_wavelength,
        inv_freq,
        torch.where(wavelength > low_freq_wavelength, inv_freq / factor, blended),
    )


def yarn_correction_range(
    dim: int,
    base: float,
    original_max_position: int,
    beta_fast: float,
    beta_slow: float,
    truncate: bool = True,
) -> tuple[float, float]:
    """The pair indices where YaRN's ramp from extrapolation to interpolation starts and ends."""

    def correction_dim(rotations: float) -> float:
        return dim * math.log(original_max_position / (rotations * TWO_PI)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, dim - 1)


def yarn_inv_freq(
    dim: int,
    base: float,
    factor: float,
    original_max_position: int,
    beta_fast: float = 32,
    beta_slow: float = 1,
    truncate: bool = True,
) -> torch.Tensor:
    """YaRN's "NTK-by-parts" frequencies (attention temperature: `yarn_attention_factor`)."""
    inv_freq = rope_inv_freq(dim, base)
    low, high = yarn_correction_range(
        dim, base, original_max_position, beta_fast, beta_slow, truncate
    )
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp
    return (inv_freq / factor) * (1 - keep) + inv_freq * keep


def _yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def yarn_attention_factor(
    factor: float,
    attention_factor: float | None = None,
    mscale: float | None = None,
    mscale_all_dim: float | None = None,
) -> float:
    """YaRN's magnitude scale of cos and sin: explicit, DeepSeek's ratio form, or 0.1 ln s + 1."""
    if attention_factor is not None:
        return float(attention_factor)
    if mscale and mscale_all_dim:
        return _yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim)
    return _yarn_mscale(factor)


def round_wavelengths(inv_freq: torch.Tensor) -> torch.Tensor:
    """The Resonance rule: each wavelength 2*pi / theta rounded to the nearest integer."""
    return torch.round(TWO_PI / inv_freq.to(torch.float64))


def cos_sin_table(
    inv_freq: torch.Tensor,
    num_positions: int,
    attention_factor: float = 1.0,
    period: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rows ``[cos | sin] * attention_factor`` for positions 0 .. num_positions - 1, in float64.

    With an integer ``period`` per pair (a Resonance wavelength), the angle is taken as
    ``(t mod period) * theta``: the same value in exact arithmetic, and it makes every row
    repeat with that period bit for bit, however far the positions go.
    """
    positions = torch.arange(num_positions, dtype=torch.float64)[:, None]
    inv_freq = inv_freq.to(torch.float64)[None, :]
    if period is not None:
        positions = torch.remainder(positions, period.to(torch.float64)[None, :])
    angles = positions * inv_freq
    return torch.cat((angles.cos(), angles.sin()), dim=-1) * attention_factor
