"""An independent float64 reference of RoPE scalings and Resonance, written from the paper.

NumPy and the formulas of the method's description only; it shares no code with rope_plugins.
"""

import math

import numpy as np


def rope(dim: int, base: float) -> np.ndarray:
    i = np.arange(dim // 2, dtype=np.float64)
    return base ** (-2.0 * i / dim)


def yarn(
    dim: int,
    base: float,
    factor: float,
    original: int,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
    truncate: bool = True,
) -> tuple[np.ndarray, float]:
    """YaRN as its public implementations compute it: frequencies and the attention scale."""
    theta = rope(dim, base)

    def corr_dim(r: float) -> float:
        return dim * math.log(original / (2 * math.pi * r)) / (2 * math.log(base))

    low, high = corr_dim(beta_fast), corr_dim(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2) - low) / (high - low), 0.0, 1.0)
    keep = 1.0 - ramp
    blended = (theta / factor) * (1.0 - keep) + theta * keep
    mscale = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0
    return blended, mscale


def linear(dim: int, base: float, factor: float) -> np.ndarray:
    return rope(dim, base) / factor


def ntk(dim: int, base: float, factor: float) -> np.ndarray:
    # NTK-aware: base' = base * factor ** (d / (d - 2)) seen through vLLM's form,
    # theta_i = (base * s) ** (-2i/d) / s ** (2/d)
    i = np.arange(dim // 2, dtype=np.float64)
    return (base * factor) ** (-2.0 * i / dim) * factor ** (-2.0 / dim)


def llama3(dim: int, base: float, factor: float, low: float, high: float, original: int):
    theta = rope(dim, base)
    wavelength = 2 * math.pi / theta
    out = np.empty_like(theta)
    for k, (t, w) in enumerate(zip(theta, wavelength, strict=True)):
        if w < original / high:
            out[k] = t
        elif w > original / low:
            out[k] = t / factor
        else:
            smooth = (original / w - low) / (high - low)
            out[k] = (1 - smooth) * t / factor + smooth * t
    return out


def resonance(theta: np.ndarray) -> np.ndarray:
    """Round each wavelength to the nearest integer and return the new frequencies."""
    wavelengths = np.array([round(2 * math.pi / t) for t in theta], dtype=np.float64)
    return 2 * math.pi / wavelengths


def cos_sin(theta: np.ndarray, positions: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """[cos | sin] rows from float64 angles (error about 1e-11 rad at position 1e5)."""
    angles = np.outer(positions.astype(np.float64), theta)
    return np.concatenate([np.cos(angles), np.sin(angles)], axis=-1) * scale
