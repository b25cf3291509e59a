"""Speculative decoding through the pass-through: vLLM's n-gram prompt lookup on the CPU build.

It suits questions over a long document (answers copy from the prompt). Greedy decoding with
drafts is lossless: the text equals the session server's, which runs without them.
"""

import json

import httpx
import pytest

from harness.client import metric
from tests.helpers import FACTOR, MODEL_NAME, served, token_prompt

NGRAM = {
    "method": "ngram",
    "num_speculative_tokens": 3,
    "prompt_lookup_max": 3,
    "prompt_lookup_min": 1,
}


@pytest.fixture(scope="module")
def speculative_server(plain_checkpoint, tmp_path_factory):
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
            "--engine-arg",
            f"speculative_config={json.dumps(NGRAM)}",
        ],
        tmp_path_factory.mktemp("speculative") / "server.log",
    ) as running:
        yield running


def test_ngram_drafts_are_used_and_greedy_text_is_unchanged(speculative_server, http):
    """A 500-token prompt holds most tokens the model writes next, so drafts are proposed."""
    body = {
        "model": MODEL_NAME,
        "prompt": token_prompt(500, salt=8),
        "max_tokens": 32,
        "temperature": 0,
        "ignore_eos": True,
    }
    drafted = httpx.post(f"{speculative_server.base_url}/v1/completions", json=body, timeout=120)
    assert drafted.status_code == 200, drafted.text
    plain = http.post("/v1/completions", json=body).json()
    assert drafted.json()["choices"][0]["text"] == plain["choices"][0]["text"]
    assert metric(speculative_server.base_url, "vllm:spec_decode_num_draft_tokens_total") > 0
    # per-request RoPE tables are not offered with a drafter: served static, and said so
    assert "rope policy: static (speculative decoding's drafter" in speculative_server.output()
