"""The tiers hold: a test's marker is its directory, and a fast test cannot start an engine."""

import pytest
from vllm.v1.engine.async_llm import AsyncLLM  # (imported first: the guard patches what is loaded)

from tests import helpers


def test_this_test_is_marked_with_its_directory(request):
    assert request.node.get_closest_marker("unit") is not None
    assert request.node.get_closest_marker("engine") is None


def test_a_fast_tier_test_that_starts_a_server_fails_loudly(tmp_path):
    with pytest.raises(RuntimeError, match="must not start a real vLLM engine"):
        helpers.start_server(["--model", "unused"], tmp_path / "server.log")


def test_a_fast_tier_test_that_starts_an_engine_fails_loudly():
    with pytest.raises(RuntimeError, match="must not start a real vLLM engine"):
        AsyncLLM(None, None, None)
