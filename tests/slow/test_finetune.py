"""resonance-finetune on the tiny checkpoint: trained with resonance_yarn x4, served as written.

The whole model is fine-tuned first (the plain checkpoint, 256 trained positions, extended to
1024), then a LoRA adapter on top of that result; one server serves the LoRA run's base (the
whole fine-tune's weights under the scaled config it wrote) and the adapter, with no RoPE flags.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from checkpoints.tiny import sample_text
from finetune.cli import main as finetune
from tests.helpers import (
    FACTOR,
    ORIGINAL_CONTEXT,
    SERVED_CONTEXT,
    prompt_logprobs,
    served,
    token_prompt,
    transformers_logprobs,
)

BASE, ADAPTER, RANK, SEQ_LEN = "tuned", "tuned-lora", 8, 512
TRAINING = [
    "--rope-type",
    "resonance_yarn",
    "--rope-factor",
    str(FACTOR),
    "--seq-len",
    str(SEQ_LEN),
    "--gradient-accumulation",
    "2",
    "--learning-rate",
    "1e-3",
    "--warmup-steps",
    "1",
]


def run_finetune(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "finetune.cli", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Twelve documents of the tiny tokenizer's words (about 12K tokens): one held out."""
    folder = tmp_path_factory.mktemp("corpus")
    for i in range(11):
        (folder / f"doc{i}.txt").write_text(" ".join(sample_text(100 + i, 120)))
    rows = [json.dumps({"text": " ".join(sample_text(200, 120))})]
    (folder / "more.jsonl").write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture(scope="module")
def whole(plain_checkpoint, corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "whole"
    run_finetune(
        "--model",
        str(plain_checkpoint),
        "--corpus",
        str(corpus),
        "--out",
        str(out),
        "--steps",
        "6",
        *TRAINING,
    )
    return out


@pytest.fixture(scope="module")
def lora(whole, corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "lora"
    run_finetune(
        "--model",
        str(whole),
        "--corpus",
        str(corpus),
        "--out",
        str(out),
        "--steps",
        "4",
        "--lora-rank",
        str(RANK),
        *TRAINING,
    )
    return out


@pytest.fixture(scope="module")
def http(lora, tmp_path_factory):
    import httpx

    with (
        served(
            [
                "--model",
                str(lora / "base"),
                "--served-model-name",
                BASE,
                "--dtype",
                "float32",
                "--enforce-eager",
                "--lora-module",
                f"{ADAPTER}={lora / 'adapter'}",
                "--max-lora-rank",
                str(RANK),
            ],
            tmp_path_factory.mktemp("finetuned") / "server.log",
        ) as running,
        httpx.Client(base_url=running.base_url, timeout=120) as session,
    ):
        yield session


def test_the_written_config_carries_the_scaling(whole, lora):
    for folder in (whole, lora / "base"):
        config = json.loads((folder / "config.json").read_text())
        assert config["max_position_embeddings"] == SERVED_CONTEXT
        assert config["rope_parameters"] | {"rope_theta": None} == {
            "rope_type": "resonance_yarn",
            "factor": float(FACTOR),
            "rope_theta": None,
            "original_max_position_embeddings": ORIGINAL_CONTEXT,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
        }


def test_training_changed_the_weights_and_reported_held_out_loss(plain_checkpoint, whole, lora):
    before = load_file(plain_checkpoint / "model.safetensors")
    after = load_file(whole / "model.safetensors")
    assert before.keys() == after.keys()
    assert all(not torch.equal(before[k], after[k]) for k in before if k.endswith("proj.weight"))
    for out, steps in ((whole, 6), (lora, 4)):
        result = json.loads((out / "training.json").read_text())
        assert result["steps"] == steps and result["held_out_documents"] == 1
        assert result["held_out_sequences"] >= 1 and result["held_out_loss"] > 0
        assert result["tokens_per_second"] > 0
    adapter = load_file(lora / "adapter" / "adapter_model.safetensors")
    assert any(k.endswith("lora_B.weight") and adapter[k].abs().max() > 0 for k in adapter)


def test_served_log_probabilities_equal_transformers_on_the_written_checkpoints(http, whole, lora):
    """A 700-token prompt (past the 256 pretrained positions), float32 on both sides.

    Bounds as tests/test_lora.py's (mean 5e-4, any token 1e-2 nats; measured there: mean 8e-5):
    kernels and summation order differ, nothing else may.
    """
    ids = token_prompt(700, salt=8)
    for model, expected in (
        (BASE, transformers_logprobs(whole, ids)),
        (ADAPTER, transformers_logprobs(lora / "base", ids, lora / "adapter")),
    ):
        difference = (prompt_logprobs(http, model, ids) - expected).abs()
        print(
            f"\n{model} served vs transformers: mean {difference.mean():.2e}, "
            f"max {difference.max():.2e}"
        )
        assert difference.mean() < 5e-4 and difference.max() < 1e-2
    effect = (prompt_logprobs(http, BASE, ids) - prompt_logprobs(http, ADAPTER, ids)).abs().mean()
    assert effect > 1e-4  # the trained adapter is served, not the base again


def test_models_shows_the_trained_scaling(http):
    cards = {card["id"]: card for card in http.get("/v1/models").json()["data"]}
    assert set(cards) == {BASE, ADAPTER}
    for card in cards.values():
        assert card["rope_parameters"]["rope_type"] == "resonance_yarn"
        assert card["rope_parameters"]["factor"] == FACTOR
        assert card["max_model_len"] == SERVED_CONTEXT


def test_an_interrupted_run_resumes_from_its_last_save(plain_checkpoint, corpus, tmp_path):
    out = tmp_path / "resumed"
    args = [
        "--model",
        str(plain_checkpoint),
        "--corpus",
        str(corpus),
        "--out",
        str(out),
        "--steps",
        "40",
        "--save-steps",
        "2",
        *TRAINING,
    ]
    process = subprocess.Popen(
        [sys.executable, "-m", "finetune.cli", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not list((out / "checkpoints").glob("checkpoint-*/trainer_state.json")):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    process.kill()
    process.wait()
    assert not (out / "training.json").exists()
    run_finetune(*args)
    result = json.loads((out / "training.json").read_text())
    assert result["resumed_from"] and "checkpoint-" in result["resumed_from"]
    assert not (out / "checkpoints").exists()
    changed = run_finetune(*args[: -len(TRAINING)], "--steps", "41", *TRAINING, check=False)
    assert changed.returncode != 0 and "holds a finished fine-tune" in changed.stderr


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (["--rope-factor", "0.5"], "--rope-factor must be at least 1"),
        (["--seq-len", "2048"], "longer than the extended context (1024 tokens"),
        (["--rope-type", "resonance", "--rope-factor", "4"], "takes no --rope-factor"),
        (["--tiny-corpus"], "fewer than one sequence"),
    ],
)
def test_refusals_are_one_line_and_write_nothing(
    plain_checkpoint, corpus, tmp_path, change, words, capsys
):
    small = tmp_path / "small.txt"
    small.write_text("Hello there.")
    chosen = str(small) if change == ["--tiny-corpus"] else str(corpus)
    change = [] if change == ["--tiny-corpus"] else change
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stopped:
        finetune(
            [
                "--model",
                str(plain_checkpoint),
                "--corpus",
                chosen,
                "--out",
                str(out),
                *TRAINING,
                *change,
            ]
        )
    message = str(stopped.value.code)
    assert message.startswith("resonance-finetune: error:") and words in message
    assert "\n" not in message
    assert not out.exists()
