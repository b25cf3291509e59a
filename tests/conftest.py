"""Session-wide fixtures (tiny local checkpoints, one offline vLLM engine, one real server) and
the test tiers.

A test's tier is the directory it lives in, and its marker is derived from that, so it cannot
be wrong: ``unit`` (pure), ``http`` (the app in process over the fake engine), ``engine`` (real
vLLM on the tiny checkpoint), ``slow`` (the demo model, parallel layouts, routers, training).
A real engine started from a unit or http test fails at once.
"""

import os
import sys
from pathlib import Path

import pytest

from tests import helpers
from tests.helpers import (
    API_KEY,
    FACTOR,
    MAX_CONCURRENT,
    MAX_QUEUED_TOKENS,
    MAX_SEQUENCES,
    MODEL_NAME,
    ORIGINAL_CONTEXT,
    RESONANCE_YARN,
    SERVED_CONTEXT,
    keyed_client,
    served,
)

# Before vLLM is imported anywhere: a small KV cache, and functions sent to the worker by
# `LLM.apply_model` (used to read the cos/sin table out of the loaded model).
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Test servers start their constraint compiler at the first constrained request (production:
# with the engine), so the many servers that never see a constraint do not pay for it.
os.environ.setdefault("RESONANCE_CONSTRAINT_COMPILER", "lazy")


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


@pytest.fixture(scope="session")
def http(server):
    """httpx against the session server, with its API key."""
    with keyed_client(server, API_KEY) as session:
        yield session


TIERS = ("unit", "http", "engine", "slow")
FAST_TIERS = ("unit", "http")


def tier_of(item: pytest.Item) -> str:
    parts = Path(item.path).relative_to(Path(__file__).parent).parts
    if len(parts) < 2 or parts[0] not in TIERS:
        raise pytest.UsageError(f"{item.nodeid}: tests live in one of tests/{{{','.join(TIERS)}}}/")
    return parts[0]


def pytest_collection_modifyitems(items):
    """Each test marked with its tier; tests marked ``last`` (they stop the session server)
    run after all others."""
    for item in items:
        item.add_marker(tier_of(item))
    items.sort(key=lambda item: item.get_closest_marker("last") is not None)


@pytest.fixture(autouse=True)
def _no_engine_in_fast_tiers(request, monkeypatch):
    """A unit or http test that starts a real engine (or server process) fails loudly."""
    if tier_of(request.node) not in FAST_TIERS:
        return

    def refuse(*args, **kwargs):
        raise RuntimeError(
            f"{request.node.nodeid} is a {tier_of(request.node)} test: it must not start a real "
            "vLLM engine or server; move it to tests/engine or tests/slow"
        )

    import harness.servers

    monkeypatch.setattr(harness.servers, "start_server", refuse)
    monkeypatch.setattr(helpers, "start_process", refuse)
    if "vllm" in sys.modules:  # (a unit test that never imports vLLM need not pay for it)
        import vllm.v1.engine.async_llm
        import vllm.v1.engine.llm_engine

        monkeypatch.setattr(vllm.v1.engine.async_llm.AsyncLLM, "__init__", refuse)
        monkeypatch.setattr(vllm.v1.engine.llm_engine.LLMEngine, "__init__", refuse)
