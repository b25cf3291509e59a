"""The rotary embedding vLLM builds for every Resonance type.

It is vLLM's own `RotaryEmbedding` with another cos/sin table: every forward path (the fused
CUDA rotary kernel, the CPU path, the native one) reads `cos_sin_cache`, so nothing is added
per token.
"""

from collections.abc import Mapping
from typing import Any

import torch
from vllm.model_executor.layers.rotary_embedding.base import RotaryEmbedding

from rope_plugins.catalog import DEFAULT_ROPE_THETA
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
        super().__init__(
            head_size,
            rotary_dim,
            self.resonance.max_positions,
            rope_parameters.get("rope_theta") or DEFAULT_ROPE_THETA,
            is_neox_style,
            dtype,
        )

    def _compute_inv_freq(self, base: float) -> torch.Tensor:
        return self.resonance.inv_freq.float()

    def _compute_cos_sin_cache(self) -> torch.Tensor:
        # Computed in float64, then stored in float32 like vLLM's own tables.
        return self.resonance.cos_sin_table().float()
