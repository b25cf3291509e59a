"""From a ``rope_parameters`` dict to the Resonance cos/sin table a model uses.

One function per base method maps the parameters to that method's own inverse frequencies
and attention factor; `resonance_rope` rounds the wavelengths and keeps the rest.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from rope_plugins import frequencies as f
from rope_plugins.catalog import DEFAULT_ROPE_THETA, RESONANCE_TYPES, served_max_positions
from rope_plugins.validation import validate_rope_parameters, with_yarn_defaults

# (params, rotary dim, max positions, sequence length) -> (inverse frequencies, attention factor)
BaseMethod = Callable[[Mapping[str, Any], int, int, float], tuple[torch.Tensor, float]]


def _default(p: Mapping[str, Any], dim: int, max_pos: int, seq_len: float):
    return f.rope_inv_freq(dim, p["rope_theta"]), 1.0


def _linear(p: Mapping[str, Any], dim: int, max_pos: int, seq_len: float):
    return f.linear_inv_freq(dim, p["rope_theta"], p["factor"]), 1.0


def _ntk(p: Mapping[str, Any], dim: int, max_pos: int, seq_len: float):
    return f.ntk_inv_freq(dim, p["rope_theta"], p["factor"], p.get("mixed_b")), 1.0


def _dynamic(p: Mapping[str, Any], dim: int, max_pos: int, seq_len: float):
    trained = p.get("max_trained_positions") or max_pos
    return f.dynamic_ntk_inv_freq(dim, p["rope_theta"], p["factor"], seq_len, trained), 1.0


def _llama3(p: Mapping[str, Any], dim: int, max_pos: int, seq_len: float):
    inv_freq = f.llama3_inv_freq(
        dim,
        p["rope_theta"],
        p["factor"],
        p["low_freq_factor"],
        p["high_freq_factor"],
        p["original_max_position_embeddings"],
    )
    return inv_freq, 1.0


def _yarn(p: Mapping[str, Any], dim: int, max_pos: int, seq_len: float):
    p = with_yarn_defaults(p)
    inv_freq = f.yarn_inv_freq(
        dim,
        p["rope_theta"],
        p["factor"],
        p["original_max_position_embeddings"],
        p["beta_fast"],
        p["beta_slow"],
        p["truncate"],
    )
    scale = f.yarn_attention_factor(
        p["factor"], p.get("attention_factor"), p.get("mscale"), p.get("mscale_all_dim")
    )
    return inv_freq, scale


BASE_METHODS: dict[str, BaseMethod] = {
    "default": _default,
    "linear": _linear,
    "ntk": _ntk,
    "dynamic": _dynamic,
    "llama3": _llama3,
    "yarn": _yarn,
}


@dataclass(frozen=True)
class ResonanceRope:
    """What a Resonance RoPE type gives a model: rounded frequencies and how to scale them."""

    rope_type: str
    inv_freq: torch.Tensor  # float64, 2*pi / wavelengths
    wavelengths: torch.Tensor  # float64, every value an integer
    attention_factor: float
    max_positions: int  # rows of the cos/sin table

    def cos_sin_table(self) -> torch.Tensor:
        return f.cos_sin_table(
            self.inv_freq, self.max_positions, self.attention_factor, period=self.wavelengths
        )


def resonance_rope(
    params: Mapping[str, Any],
    rotary_dim: int,
    max_position: int,
    seq_len: float | None = None,
) -> ResonanceRope:
    """Resolve validated parameters.

    ``seq_len`` only matters to the dynamic method, whose base grows with the length it is
    computed for: by default the served length, so that a static table (vLLM's) is the one
    dynamic NTK gives a sequence of that length (transformers recomputes it per length).
    """
    validate_rope_parameters(params)
    params = {**params, "rope_theta": params.get("rope_theta") or DEFAULT_ROPE_THETA}
    method = BASE_METHODS[RESONANCE_TYPES[params["rope_type"]]]
    served = served_max_positions(params, max_position)
    inv_freq, attention_factor = method(params, rotary_dim, max_position, seq_len or served)
    wavelengths = f.round_wavelengths(inv_freq)
    return ResonanceRope(
        rope_type=params["rope_type"],
        inv_freq=f.TWO_PI / wavelengths,
        wavelengths=wavelengths,
        attention_factor=attention_factor,
        max_positions=served,
    )
