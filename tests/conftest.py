"""Session-wide fixtures: tiny local checkpoints and one offline vLLM engine."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

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
# Admission limits of the session server: two prompts of 3x the original context at once.
MAX_CONCURRENT, MAX_QUEUED_PROMPT_TOKENS = 32, 2048
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningServer:
    base_url: str
    process: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(args: list[str], log: Path, env: dict[str, str] | None = None) -> RunningServer:
    """Start ``python -m server`` and wait until /health answers 200."""
    port = free_port()
    handle = log.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "server", "--port", str(port), *args],
        stdout=handle,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,  # its own process group: the engine's processes included
    )
    server = RunningServer(f"http://127.0.0.1:{port}", process, log)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{server.output()}")
        try:
            if httpx.get(f"{server.base_url}/health", timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"server did not become healthy:\n{server.output()}")


def stop_server(server: RunningServer, timeout: float = 60) -> int:
    """SIGTERM, as an orchestrator would; then nothing of the server may be left running."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.process.pid, signal.SIGKILL)
    return server.process.returncode


@pytest.fixture(scope="session")
def server(plain_checkpoint, tmp_path_factory):
    """The real server on the plain checkpoint, extended by flags to resonance_yarn x4."""
    running = start_server(
        [
            "--model", str(plain_checkpoint),
            "--served-model-name", MODEL_NAME,
            "--rope-type", "resonance_yarn",
            "--rope-factor", str(FACTOR),
            "--dtype", "float32",
            "--enforce-eager",
            "--max-num-seqs", "32",
            "--api-key", API_KEY,
            "--api-key", "test-key-2",
            "--max-concurrent-requests", str(MAX_CONCURRENT),
            "--max-queued-prompt-tokens", str(MAX_QUEUED_PROMPT_TOKENS),
            "--request-timeout", "120",
        ],
        tmp_path_factory.mktemp("server") / "server.log",
    )  # fmt: skip
    yield running
    stop_server(running)


@pytest.fixture(scope="session")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server.base_url}/v1", api_key=API_KEY, max_retries=0)


@pytest.fixture(scope="session")
def http(server):
    """httpx against the session server, with its API key."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=120) as session:
        yield session


def pytest_collection_modifyitems(items):
    """Tests marked ``last`` (they stop the session server) run after all others."""
    items.sort(key=lambda item: item.get_closest_marker("last") is not None)
