"""What the engine-plan tests share: a machine, a model folder and a tiny LLaMA config, so a
plan is made without a checkpoint on disk or an engine."""

from transformers import LlamaConfig

from server.model_source import ModelSource
from server.plan import Platform

GiB = 2**30
MACHINE = Platform(cpu=True, memory_bytes=24 * GiB, environ={})


def tiny_config(**overrides) -> LlamaConfig:
    values = dict(
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=128,
        max_position_embeddings=256,
        vocab_size=2000,
    )
    return LlamaConfig(**(values | overrides))


def folder(dtype: str = "auto") -> ModelSource:
    return ModelSource("/models/tiny", None, "a folder", dtype)


def trained_with_scaling() -> LlamaConfig:
    """A checkpoint whose own config carries Resonance-YaRN x4 over 256 positions."""
    return tiny_config(
        max_position_embeddings=1024,
        rope_parameters={
            "rope_type": "resonance_yarn",
            "rope_theta": 1e4,
            "factor": 4.0,
            "original_max_position_embeddings": 256,
        },
    )
