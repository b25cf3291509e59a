"""Session-wide fixtures: tiny local checkpoints and one offline vLLM engine."""

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.servers import SERVER, RunningServer, free_port, stop_server
from harness.servers import start_server as start_process

# Before vLLM is imported anywhere: a small KV cache, and functions sent to the worker by
# `LLM.apply_model` (used to read the cos/sin table out of the loaded model).
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ORIGINAL_CONTEXT = 256
FACTOR = 4
SERVED_CONTEXT = ORIGINAL_CONTEXT * FACTOR
MODEL_NAME = "tiny-llama2-chat"
API_KEY = "test-key-1"
# Admission limits of the session server (requests, sequences, tokens in flight).
MAX_CONCURRENT, MAX_SEQUENCES, MAX_QUEUED_TOKENS = 32, 48, 40 * SERVED_CONTEXT
RESONANCE_YARN = {
    "rope_type": "resonance_yarn",
    "rope_theta": 10000.0,
    "factor": float(FACTOR),
    "original_max_position_embeddings": ORIGINAL_CONTEXT,
}


@pytest.fixture(scope="session")
def resonance_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint whose config.json says resonance_yarn, in the HF YaRN convention."""
    from checkpoints.tiny import build_tiny_checkpoint

    out = tmp_path_factory.mktemp("resonance_yarn")
    return build_tiny_checkpoint(out, RESONANCE_YARN, max_position_embeddings=SERVED_CONTEXT)


@pytest.fixture(scope="session")
def plain_checkpoint(tmp_path_factory) -> Path:
    """The same weights with plain RoPE and the original context in config.json."""
    from checkpoints.tiny import build_tiny_checkpoint

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


def start_server(
    args: list[str], log: Path, env: dict | None = None, timeout: float = 240
) -> RunningServer:
    """``python -m server`` with these arguments on a free port, once healthy."""
    port = free_port()
    command = [*SERVER, "--port", str(port), *args]
    return start_process(command, port, log, env=env, timeout=timeout)


@contextlib.contextmanager
def served(args: list[str], log: Path, **kwargs) -> Iterator[RunningServer]:
    """A server for the length of the block (a fixture's), stopped as an orchestrator would."""
    running = start_server(args, log, **kwargs)
    try:
        yield running
    finally:
        stop_server(running)


@pytest.fixture(scope="session")
def server(plain_checkpoint, tmp_path_factory):
    """The real server on the plain checkpoint, extended by flags to resonance_yarn x4."""
    with served(
        [
            "--model",
            str(plain_checkpoint),
            "--served-model-name",
            MODEL_NAME,
            "--rope-type",
            "resonance_yarn",
            "--rope-factor",
            str(FACTOR),
            "--dtype",
            "float32",
            "--enforce-eager",
            "--max-num-seqs",
            "32",
            "--api-key",
            API_KEY,
            "--api-key",
            "test-key-2",
            "--max-concurrent-requests",
            str(MAX_CONCURRENT),
            "--max-concurrent-sequences",
            str(MAX_SEQUENCES),
            "--max-queued-tokens",
            str(MAX_QUEUED_TOKENS),
            "--request-timeout",
            "120",
            "--tool-call-parser",
            "hermes",
        ],
        tmp_path_factory.mktemp("server") / "server.log",
    ) as running:
        yield running


@pytest.fixture(scope="session")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server.base_url}/v1", api_key=API_KEY, max_retries=0)


def keyed_client(server: RunningServer, key: str) -> httpx.Client:
    """httpx against ``server``, sending ``key``."""
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.Client(base_url=server.base_url, headers=headers, timeout=120)


@pytest.fixture(scope="session")
def http(server):
    """httpx against the session server, with its API key."""
    with keyed_client(server, API_KEY) as session:
        yield session


def pytest_collection_modifyitems(items):
    """Tests marked ``last`` (they stop the session server) run after all others."""
    items.sort(key=lambda item: item.get_closest_marker("last") is not None)
