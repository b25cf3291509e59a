"""The Resonance types in Hugging Face transformers: RoPE init functions and config validation.

A model fine-tuned with a Resonance type in transformers then computes the same frequencies
there as it does when vLLM serves it.
"""

from typing import Any

import torch

from rope_plugins.catalog import RESONANCE_TYPES
from rope_plugins.resonance import resonance_rope
from rope_plugins.validation import validate_rope_parameters


def _rope_parameters(config: Any, layer_type: str | None) -> dict[str, Any]:
    return config.rope_parameters[layer_type] if layer_type else config.rope_parameters


def compute_resonance_parameters(
    config: Any,
    device: torch.device | None = None,
    seq_len: int | torch.Tensor | None = None,
    layer_type: str | None = None,
) -> tuple[torch.Tensor, float]:
    """A transformers RoPE init function: ``(config, ...) -> (inv_freq, attention_factor)``."""
    params = _rope_parameters(config, layer_type)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    dim = int(head_dim * params.get("partial_rotary_factor", 1.0))
    max_position = config.max_position_embeddings
    # Dynamic NTK in transformers starts at the trained length and is recomputed for each
    # longer sequence (its rope_type contains "dynamic"); the other methods ignore seq_len.
    seq_len = max(int(seq_len), max_position) if seq_len is not None else max_position
    rope = resonance_rope(params, dim, max_position, seq_len)
    return rope.inv_freq.to(device=device, dtype=torch.float32), rope.attention_factor


def _validate(self: Any, rope_parameters: dict[str, Any], ignore_keys: set | None = None) -> None:
    validate_rope_parameters(rope_parameters)


def install() -> None:
    from transformers import modeling_rope_utils

    for rope_type in RESONANCE_TYPES:
        modeling_rope_utils.ROPE_INIT_FUNCTIONS[rope_type] = compute_resonance_parameters
        setattr(
            modeling_rope_utils.RotaryEmbeddingConfigMixin,
            f"_validate_{rope_type}_rope_parameters",
            _validate,
        )
