"""The demo model, started once for the slow tier (its chat, agent and long-context tests)."""

import pytest

from tests.helpers import start_server, stop_server


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("demo-cache")


@pytest.fixture(scope="session")
def demo_server(demo_cache, tmp_path_factory):
    """As ``make serve`` starts it, with a smaller KV cache and no compilation for the tests."""
    running = start_server(
        [
            "--cache-dir",
            str(demo_cache),
            "--enforce-eager",
            "--cpu-kv-cache-space-gib",
            "2",
            "--max-num-seqs",
            "4",
        ],
        tmp_path_factory.mktemp("demo") / "server.log",
        timeout=600,  # conversion of the GGUF file, then a 30-layer model's start-up
    )
    yield running
    stop_server(running)


@pytest.fixture(scope="session")
def demo_client(demo_server):
    from openai import OpenAI

    return OpenAI(base_url=f"{demo_server.base_url}/v1", api_key="none", max_retries=0)
