"""The rotary embedding vLLM builds for every Resonance type.

It is vLLM's own `RotaryEmbedding` with another cos/sin table: every forward path (the fused
CUDA rotary kernel, the CPU path, the native one) reads `cos_sin_cache`, so nothing is added
per token.

With ``unscaled_rows`` (L) in its parameters the table has two parts: the Resonance table for
positions [0, S) (S: the served length), then the checkpoint's unscaled RoPE, computed as vLLM
computes plain RoPE, for [S, S + L). A request whose positions the model runner shifts by S
(`rope_plugins.table_offsets`) runs exactly as the unscaled model; any other reads the first
part, as with a table of one part.
"""

from collections.abc import Mapping
from typing import Any

import torch
from vllm.model_executor.layers.rotary_embedding.base import RotaryEmbedding

from rope_plugins import table_offsets
from rope_plugins.catalog import DEFAULT_ROPE_THETA, UNSCALED_ROWS
from rope_plugins.resonance import resonance_rope


class ResonanceRotaryEmbedding(RotaryEmbedding):
    def __init__(
        self,
        head_size: int,
        rotary_dim: int,
        max_position: int,
        is_neox_style: bool,
        dtype: torch.dtype,
        rope_parameters: Mapping[str, Any],
    ) -> None:
        self.resonance = resonance_rope(rope_parameters, rotary_dim, max_position)
        self.rope_type = self.resonance.rope_type
        self.attention_factor = self.resonance.attention_factor
        self.unscaled_rows = int(rope_parameters.get(UNSCALED_ROWS) or 0)
        if self.unscaled_rows:
            table_offsets.require()  # no shift, no second table: refused, not served wrong
        super().__init__(
            head_size,
            rotary_dim,
            self.resonance.max_positions + self.unscaled_rows,
            rope_parameters.get("rope_theta") or DEFAULT_ROPE_THETA,
            is_neox_style,
            dtype,
        )

    def _compute_inv_freq(self, base: float) -> torch.Tensor:
        return self.resonance.inv_freq.float()

    def _compute_cos_sin_cache(self) -> torch.Tensor:
        # Computed in float64, then stored in float32 like vLLM's own tables.
        scaled = self.resonance.cos_sin_table().float()
        if not self.unscaled_rows:
            return scaled
        return torch.cat((scaled, self._unscaled_table(self.unscaled_rows)))

    def _unscaled_table(self, rows: int) -> torch.Tensor:
        """vLLM's plain RoPE table (`RotaryEmbeddingBase._compute_cos_sin_cache`, whose formula
        this repeats because it reads this class's `_compute_inv_freq`, Resonance's), ``rows``
        long: the values an unscaled server of the checkpoint computes, bit for bit (tested)."""
        inv_freq = super()._compute_inv_freq(self.base)
        freqs = torch.einsum("i,j -> ij", torch.arange(rows, dtype=torch.float), inv_freq)
        return torch.cat((freqs.cos(), freqs.sin()), dim=-1)
