"""GGUF files as --model: converted once into the cache, then served like a folder."""

import os
import time

import pytest
import torch
from safetensors.torch import load_file

from checkpoints.gguf import COMPLETE, GGUFError, cached_conversion
from tests.gguf_file import write_gguf
from tests.helpers import FACTOR, PROMPT, offline_greedy, start_server, stop_server


@pytest.fixture(scope="module")
def gguf_path(plain_checkpoint, tmp_path_factory):
    return write_gguf(plain_checkpoint, tmp_path_factory.mktemp("gguf") / "tiny-chat.gguf")


def test_conversion_gives_back_the_same_weights_and_tokenizer(
    gguf_path, plain_checkpoint, tmp_path
):
    from transformers import AutoTokenizer

    folder = cached_conversion(gguf_path, tmp_path)
    original = load_file(plain_checkpoint / "model.safetensors")
    converted = load_file(folder / "model.safetensors")
    assert set(converted) == set(original)
    for name, tensor in original.items():
        assert torch.equal(converted[name], tensor), name  # float32 in, float32 out
    theirs = AutoTokenizer.from_pretrained(plain_checkpoint)
    ours = AutoTokenizer.from_pretrained(folder)
    assert ours(PROMPT).input_ids == theirs(PROMPT).input_ids
    messages = [{"role": "user", "content": "Hi"}]
    assert ours.apply_chat_template(messages, tokenize=False) == theirs.apply_chat_template(
        messages, tokenize=False
    )


def test_a_file_is_converted_once_and_a_broken_conversion_rebuilt(gguf_path, tmp_path):
    folder = cached_conversion(gguf_path, tmp_path)
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    time.sleep(0.01)
    assert cached_conversion(gguf_path, tmp_path) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no half-built leftovers
    os.remove(folder / COMPLETE)  # as if a conversion had been interrupted
    (folder / "model.safetensors").write_bytes(b"truncated")
    assert cached_conversion(gguf_path, tmp_path) == folder
    assert (folder / COMPLETE).is_file()
    assert load_file(folder / "model.safetensors")  # whole again


def test_a_file_that_is_not_gguf_is_one_clear_error(tmp_path):
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"not a gguf file at all")
    with pytest.raises(GGUFError, match="not a GGUF file"):
        cached_conversion(bogus, tmp_path / "cache")


def test_a_gguf_file_is_served(gguf_path, offline_llm, tmp_path_factory):
    """Served with the session's Resonance-YaRN x4, it answers as the same weights do."""
    from openai import OpenAI

    server = start_server(
        [
            "--model",
            str(gguf_path),
            "--cache-dir",
            str(tmp_path_factory.mktemp("gguf-cache")),
            "--rope-type",
            "resonance_yarn",
            "--rope-factor",
            str(FACTOR),
            "--rope-policy",
            "static",  # every request on the offline engine's table
            "--dtype",
            "float32",
            "--enforce-eager",
        ],
        tmp_path_factory.mktemp("gguf-server") / "server.log",
    )
    try:
        client = OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0)
        (model,) = client.models.list().data
        assert model.id == "tiny-chat"  # the file's name
        reply = client.completions.create(
            model="tiny-chat", prompt=PROMPT, max_tokens=24, temperature=0
        )
        assert reply.choices[0].text == offline_greedy(offline_llm, PROMPT, 24)
        assert f"model: {gguf_path}, converted into" in server.output()
    finally:
        stop_server(server)
