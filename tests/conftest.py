"""Session-wide fixtures: tiny local checkpoints and one offline vLLM engine."""

import os
from pathlib import Path

import pytest

# Before vLLM is imported anywhere: a small KV cache, and functions sent to the worker by
# `LLM.apply_model` (used to read the cos/sin table out of the loaded model).
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ORIGINAL_CONTEXT = 256
FACTOR = 4
SERVED_CONTEXT = ORIGINAL_CONTEXT * FACTOR
RESONANCE_YARN = {
    "rope_type": "resonance_yarn",
    "rope_theta": 10000.0,
    "factor": float(FACTOR),
    "original_max_position_embeddings": ORIGINAL_CONTEXT,
}


@pytest.fixture(scope="session")
def resonance_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint whose config.json says resonance_yarn, in the HF YaRN convention."""
    from server.tiny_checkpoint import build_tiny_checkpoint

    out = tmp_path_factory.mktemp("resonance_yarn")
    return build_tiny_checkpoint(out, RESONANCE_YARN, max_position_embeddings=SERVED_CONTEXT)


@pytest.fixture(scope="session")
def plain_checkpoint(tmp_path_factory) -> Path:
    """The same weights with plain RoPE and the original context in config.json."""
    from server.tiny_checkpoint import build_tiny_checkpoint

    out = tmp_path_factory.mktemp("plain")
    return build_tiny_checkpoint(out, max_position_embeddings=ORIGINAL_CONTEXT)


@pytest.fixture(scope="session")
def offline_llm(resonance_checkpoint):
    """One vLLM engine for the whole session, on the resonance_yarn checkpoint."""
    from vllm import LLM

    llm = LLM(
        model=str(resonance_checkpoint),
        dtype="float32",
        enforce_eager=True,
        seed=0,
        max_num_seqs=8,
    )
    yield llm
    llm.llm_engine.engine_core.shutdown()
