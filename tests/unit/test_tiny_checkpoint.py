"""The tiny checkpoint builder: deterministic, and nothing downloaded."""

import hashlib
import json

from checkpoints.tiny import build_tiny_checkpoint


def digest(directory) -> dict[str, str]:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.iterdir())
    }


def test_same_arguments_same_files(tmp_path):
    params = {"rope_type": "resonance_yarn", "factor": 4.0, "original_max_position_embeddings": 256}
    first = build_tiny_checkpoint(tmp_path / "a", params, max_position_embeddings=1024)
    second = build_tiny_checkpoint(tmp_path / "b", params, max_position_embeddings=1024)
    assert digest(first) == digest(second)
    other_seed = build_tiny_checkpoint(tmp_path / "c", params, 1024, seed=1)
    assert digest(other_seed)["model.safetensors"] != digest(first)["model.safetensors"]
    config = json.loads((first / "config.json").read_text())
    assert config["head_dim"] == 128 and config["rope_parameters"]["rope_type"] == "resonance_yarn"
    assert "[INST]" in (first / "chat_template.jinja").read_text()
