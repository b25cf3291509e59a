"""Fine-tuning with a registered RoPE type on transformers' Trainer, whole model or LoRA (peft).

The scaling goes into the model's config before the model is built, so training computes the
same rotary table the server serves; the config is written with the weights, so that
``resonance-serve --model OUT`` serves what was trained with no RoPE flags.

Output directory: ``OUT/finetune.json`` (the options, written first), ``OUT/checkpoints/``
(Trainer's resumable state while training runs), then the model (whole: ``OUT/`` itself; LoRA:
``OUT/base/`` with the scaled config and ``OUT/adapter/``) and ``OUT/training.json`` last.
"""

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from checkpoints.gguf import cached_conversion
from finetune.corpus import Corpus
from rope_plugins import catalog, validate_rope_parameters

OPTIONS_FILE, RESULT_FILE = "finetune.json", "training.json"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class FinetuneError(ValueError):
    """A fine-tune that cannot work (one line, for the command's error message)."""


@dataclass(frozen=True)
class Options:
    model: str
    out: str
    corpus: list[str]
    rope_type: str
    rope_factor: float | None
    original_max_position_embeddings: int | None = None
    yarn_beta_fast: float = 32.0
    yarn_beta_slow: float = 1.0
    seq_len: int = 1024
    steps: int = 200
    batch_size: int = 1
    gradient_accumulation: int = 8
    learning_rate: float = 2e-5
    warmup_steps: int = 20
    weight_decay: float = 0.0
    gradient_checkpointing: bool = False
    lora_rank: int | None = None
    lora_alpha: float | None = None
    lora_targets: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    held_out_percent: float = 5.0
    save_steps: int = 50
    seed: int = 0
    cache_dir: str = str(Path.home() / ".cache" / "resonance-serve")


@dataclass(frozen=True)
class Scaling:
    rope_parameters: dict[str, Any]
    max_position_embeddings: int
    served: int  # tokens the scaled model serves
    trained: int  # tokens the checkpoint was trained on


def model_folder(options: Options) -> Path:
    """The checkpoint folder: as given, or a .gguf file converted once (as the server does)."""
    model = Path(options.model)
    if model.suffix == ".gguf":
        if not model.is_file():
            raise FinetuneError(f"--model {model} does not exist")
        return cached_conversion(model, Path(options.cache_dir), "float32")
    if not (model / "config.json").is_file():
        raise FinetuneError(f"--model {model} is not a checkpoint folder (no config.json)")
    return model


def scaling(options: Options, config: Any) -> Scaling:
    rope_type, factor = options.rope_type, options.rope_factor
    if factor is not None and factor < 1:
        raise FinetuneError(f"--rope-factor must be at least 1, not {factor:g}")
    if catalog.takes_factor(rope_type) and factor is None:
        raise FinetuneError(f"--rope-type {rope_type} needs --rope-factor")
    if not catalog.takes_factor(rope_type) and factor is not None:
        raise FinetuneError(f"--rope-type {rope_type} extends nothing and takes no --rope-factor")
    own = dict(config.rope_parameters or {})
    trained = catalog.trained_length(own, config.max_position_embeddings)
    original = options.original_max_position_embeddings or trained
    params = catalog.scaled_rope_parameters(
        own,
        rope_type,
        factor,
        original,
        beta_fast=options.yarn_beta_fast,
        beta_slow=options.yarn_beta_slow,
    )
    if rope_type in catalog.RESONANCE_TYPES:
        try:
            validate_rope_parameters(params)
        except ValueError as error:
            raise FinetuneError(str(error)) from None
    served = catalog.served_length(rope_type, factor or 1.0, original)
    if options.seq_len > served:
        raise FinetuneError(
            f"--seq-len {options.seq_len} is longer than the extended context ({served} tokens: "
            f"{original} x {factor or 1:g}); shorten it or raise --rope-factor"
        )
    return Scaling(
        rope_parameters=params,
        max_position_embeddings=catalog.config_max_position_embeddings(
            rope_type, factor or 1.0, original
        ),
        served=served,
        trained=trained,
    )


def check_output(options: Options) -> None:
    """Refuses a finished output, or one left by a run with other options."""
    out = Path(options.out)
    if (out / RESULT_FILE).is_file():
        raise FinetuneError(f"{out} holds a finished fine-tune; choose another --out")
    saved = out / OPTIONS_FILE
    if saved.is_file() and json.loads(saved.read_text()) != asdict(options):
        raise FinetuneError(
            f"{out} holds a fine-tune started with other options ({saved}); resume it with "
            "the same options or choose another --out"
        )
    if out.exists() and not saved.is_file() and any(out.iterdir()):
        raise FinetuneError(f"{out} is not empty and holds no fine-tune; choose another --out")


def _rows(sequences: list[list[int]]) -> list[dict[str, Any]]:
    import torch

    return [{"input_ids": torch.tensor(s), "labels": torch.tensor(s)} for s in sequences]


def _lora(model: Any, options: Options) -> Any:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=options.lora_rank,
        lora_alpha=options.lora_alpha or 2 * options.lora_rank,
        target_modules=options.lora_targets,
        lora_dropout=0.0,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def train(options: Options, folder: Path, config: Any, tokenizer: Any, corpus: Corpus) -> dict:
    """Trains, writes the model and returns what ``training.json`` records."""
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments
    from transformers.trainer_utils import get_last_checkpoint

    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / OPTIONS_FILE).write_text(json.dumps(asdict(options), indent=2) + "\n")
    torch.manual_seed(options.seed)
    model = AutoModelForCausalLM.from_pretrained(folder, config=config, dtype=torch.float32)
    if options.lora_rank:
        model.save_pretrained(out / "base")
        tokenizer.save_pretrained(out / "base")
        model = _lora(model, options)
    checkpoints = out / "checkpoints"
    arguments = TrainingArguments(
        output_dir=str(checkpoints),
        max_steps=options.steps,
        per_device_train_batch_size=options.batch_size,
        per_device_eval_batch_size=1,
        gradient_accumulation_steps=options.gradient_accumulation,
        learning_rate=options.learning_rate,
        warmup_steps=options.warmup_steps,
        weight_decay=options.weight_decay,
        lr_scheduler_type="cosine",
        optim="adamw_torch",
        gradient_checkpointing=options.gradient_checkpointing,
        logging_steps=max(1, min(10, options.steps // 10)),
        save_steps=options.save_steps,
        save_total_limit=1,
        seed=options.seed,
        use_cpu=not torch.cuda.is_available(),
        dataloader_pin_memory=False,
        report_to="none",
    )
    trainer = Trainer(model=model, args=arguments, train_dataset=_rows(corpus.train))
    started = time.monotonic()
    resumed = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    trainer.train(resume_from_checkpoint=resumed)
    seconds = time.monotonic() - started
    held_out = trainer.evaluate(_rows(corpus.held_out))["eval_loss"] if corpus.held_out else None
    if options.lora_rank:
        model.save_pretrained(out / "adapter")
    else:
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    shutil.rmtree(checkpoints, ignore_errors=True)
    tokens = options.steps * options.batch_size * options.gradient_accumulation * options.seq_len
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    result = {
        "steps": options.steps,
        "resumed_from": resumed,
        "train_sequences": len(corpus.train),
        "held_out_sequences": len(corpus.held_out),
        "documents": corpus.documents,
        "held_out_documents": corpus.held_out_documents,
        "seconds": seconds,
        "tokens_per_second": tokens / seconds if not resumed else None,
        "first_logged_loss": losses[0] if losses else None,
        "last_logged_loss": losses[-1] if losses else None,
        "held_out_loss": held_out,
        "held_out_perplexity": math.exp(held_out) if held_out is not None else None,
        "log": trainer.state.log_history,
    }
    (out / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")
    return result
