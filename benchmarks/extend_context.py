"""The paper's LLM experiment in miniature: pretrain short, fine-tune long with YaRN and with
Resonance-YaRN, serve each with resonance-serve and score it with resonance-eval over HTTP.

    python -m benchmarks.extend_context [--seeds 3] [--scale cpu|gpu] [--out DIR]

1. Corpus: the ``.py`` files of this Python's standard library (its code, docstrings and
   ``pydoc_data`` documentation; test folders left out), split by file into train and test by
   the hash of the file's path; the corpus digest is recorded.
2. A LLaMA-architecture model with a tokenizer trained on the train split, pretrained from
   random weights at a 256-token context with plain RoPE (``resonance-finetune --rope-type
   none`` on a random checkpoint), once.
3. Fine-tuned with ``resonance-finetune`` on 4x that context (1024-token sequences) with
   ``yarn`` and with ``resonance_yarn`` at factor 8, so that the served context (2048) reaches
   8x the pretraining context, beyond the fine-tuned length too. Same steps, data and seed for
   both; one fine-tune per seed (seeds change the fine-tuning data order).
4. Each served by ``resonance-serve`` (the fine-tuned ones as written, no RoPE flags) and scored
   by ``resonance-eval perplexity`` on held-out documents of 2047 tokens, beside the pretrained
   model served unscaled (plain RoPE read past 256) and with both scalings without
   fine-tuning.

Each checkpoint is served and scored in a second thread while the next one trains (the engine
on one core, training on the other). Finished steps in ``--out`` are not redone.
"""

import argparse
import concurrent.futures
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.long_context_quality import resonance_eval
from harness.servers import ONE_CORE, SERVER, free_port, serving

PRETRAIN_CONTEXT, FINETUNE_LENGTH, FACTOR = 256, 1024, 8
SERVED = PRETRAIN_CONTEXT * FACTOR
EVAL_LENGTH = SERVED - 1  # one token is generated
BUCKET = 256
WINDOWS = [(0, 256), (256, 512), (512, 1024), (1024, 1536), (1536, 2047)]
METHODS = ("yarn", "resonance_yarn")
TITLES = {"yarn": "YaRN", "resonance_yarn": "Resonance-YaRN"}
TEST_PERCENT = 10


@dataclass(frozen=True)
class Scale:
    hidden_size: int
    intermediate_size: int
    layers: int
    heads: int
    vocab_size: int
    pretrain_steps: int
    pretrain_batch: int
    pretrain_lr: float
    finetune_steps: int
    finetune_batch: int
    finetune_lr: float
    test_documents: int


SCALES = {
    # about 1.9M parameters; measured stage times are in docs/RESULTS.md
    "cpu": Scale(128, 384, 4, 2, 4096, 600, 16, 2e-3, 120, 4, 5e-4, 8),
    "gpu": Scale(512, 1536, 8, 8, 8192, 20000, 64, 1e-3, 2000, 16, 2e-4, 64),
    # the whole pipeline in a few minutes, to check it runs (its figures mean nothing)
    "smoke": Scale(64, 128, 2, 1, 1024, 10, 4, 1e-3, 4, 1, 5e-4, 2),
}


def corpus_files() -> list[Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skipped = {"site-packages", "dist-packages", "test", "tests", "idle_test"}
    return sorted(
        p for p in stdlib.rglob("*.py") if not skipped & set(p.relative_to(stdlib).parts[:-1])
    )


def write_corpus(out: Path) -> dict[str, Any]:
    """train.jsonl and test.jsonl under ``out``; returns the split's facts."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    facts_file = out / "corpus.json"
    if facts_file.exists():
        return json.loads(facts_file.read_text())
    out.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    splits: dict[str, list[str]] = {"train": [], "test": []}
    for path in corpus_files():
        name = str(path.relative_to(stdlib))
        text = path.read_text(encoding="utf-8", errors="replace")
        digest.update(name.encode() + b"\0" + text.encode() + b"\0")
        held = int(hashlib.sha256(name.encode()).hexdigest(), 16) % 100 < TEST_PERCENT
        splits["test" if held else "train"].append(json.dumps({"name": name, "text": text}))
    for split, rows in splits.items():
        (out / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
    facts = {
        "source": f"standard library of Python {sys.version.split()[0]} ({len(corpus_files())} "
        f".py files, test folders left out)",
        "sha256": digest.hexdigest(),
        "train_files": len(splits["train"]),
        "test_files": len(splits["test"]),
    }
    facts_file.write_text(json.dumps(facts, indent=1))
    return facts


def base_checkpoint(out: Path, corpus: Path, scale: Scale, seed: int) -> Path:
    """Random weights and a BPE tokenizer trained on the train split."""
    from checkpoints.tiny import build_tiny_checkpoint, build_tokenizer

    if (out / "config.json").exists():
        return out
    texts = [json.loads(line)["text"] for line in (corpus / "train.jsonl").open()]
    tokenizer = build_tokenizer(seed, scale.vocab_size, texts)
    return build_tiny_checkpoint(
        out,
        None,
        PRETRAIN_CONTEXT,
        seed,
        tokenizer,
        hidden_size=scale.hidden_size,
        intermediate_size=scale.intermediate_size,
        num_hidden_layers=scale.layers,
        num_attention_heads=scale.heads,
        num_key_value_heads=scale.heads,
        head_dim=scale.hidden_size // scale.heads,
        initializer_range=0.02,
    )


def finetune(model: Path, out: Path, corpus: Path, args: list[str], threads: int) -> Path:
    """``resonance-finetune`` as a user runs it; a finished output is kept."""
    if (out / "training.json").exists() and (out / "config.json").exists():
        return out
    if out.exists():  # an interrupted run: resonance-finetune resumes it
        print(f"resuming {out.name}", flush=True)
    command = [
        sys.executable,
        "-m",
        "finetune.cli",
        "--model",
        str(model),
        "--out",
        str(out),
        "--corpus",
        str(corpus / "train.jsonl"),
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    log = out.parent / f"{out.name}.log"
    started = time.monotonic()
    with log.open("w") as sink:
        done = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        sys.exit(f"{out.name}: resonance-finetune failed, see {log}")
    print(
        f"trained {out.name} in {time.monotonic() - started:.0f} s ({threads} threads)", flush=True
    )
    return out


def extrapolated(pretrained: Path, out: Path) -> Path:
    """The pretrained model as it is, its config allowing 2048 positions (plain RoPE computes
    the same frequencies whatever max_position_embeddings says)."""
    if not out.exists():
        shutil.copytree(pretrained, out, ignore=shutil.ignore_patterns("*.json"))
        for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
            shutil.copy(pretrained / name, out / name)
        config = json.loads((pretrained / "config.json").read_text())
        (out / "config.json").write_text(json.dumps({**config, "max_position_embeddings": SERVED}))
    return out


def scored(row: str, seed: int | None, checkpoint: Path, flags: list[str], out: Path) -> dict:
    """One served configuration scored by resonance-eval over HTTP."""
    name = f"{row}-seed{seed}" if seed is not None else row
    directory = out / "eval" / name
    summary_file = directory / "summary.json"
    if not summary_file.exists():
        port = free_port()
        command = [
            *SERVER,
            "--model",
            str(checkpoint),
            "--port",
            str(port),
            "--served-model-name",
            "model",
            "--dtype",
            "float32",
            "--enforce-eager",
            "--cpu-kv-cache-space-gib",
            "1",
            "--request-timeout",
            "3600",
            *flags,
        ]
        log = out / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with serving(command, port, log, env=ONE_CORE, timeout=900) as server:
            resonance_eval(
                [
                    "perplexity",
                    "--base-url",
                    server.base_url,
                    "--model",
                    "model",
                    "--lengths",
                    str(EVAL_LENGTH),
                    "--bucket",
                    str(BUCKET),
                    "--jsonl",
                    str(out / "corpus" / "eval.jsonl"),
                    "--label",
                    name,
                    "--trained-context",
                    str(PRETRAIN_CONTEXT),
                    "--out",
                    str(directory),
                ]
            )
    summary = json.loads(summary_file.read_text())
    (buckets,) = summary["buckets"].values()
    print(
        f"scored {name}: perplexity {summary['lengths'][str(EVAL_LENGTH)]['perplexity']:.3f}",
        flush=True,
    )
    return {"row": row, "seed": seed, "buckets": buckets, "errors": summary["errors"]}


def eval_documents(corpus: Path, checkpoint: Path, count: int) -> None:
    """The first ``count`` test files (by the hash of their path) of at least 2047 tokens."""
    from transformers import AutoTokenizer

    target = corpus / "eval.jsonl"
    if target.exists():
        return
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    rows = [json.loads(line) for line in (corpus / "test.jsonl").open()]
    rows.sort(key=lambda r: hashlib.sha256(r["name"].encode()).hexdigest())
    long_enough = [r for r in rows if len(tokenizer(r["text"])["input_ids"]) > EVAL_LENGTH + 64]
    target.write_text("\n".join(json.dumps(r) for r in long_enough[:count]) + "\n")


def window_nll(buckets: list[dict], start: int, end: int) -> float:
    rows = [b for b in buckets if b["start"] >= start and b["end"] <= end]
    return sum(b["mean_nll"] * (b["end"] - b["start"]) for b in rows) / sum(
        b["end"] - b["start"] for b in rows
    )


ROWS = {
    "rope": "RoPE, pretrained (read past 256)",
    "yarn-noft": "YaRN x8, not fine-tuned",
    "resonance_yarn-noft": "Resonance-YaRN x8, not fine-tuned",
    "yarn-ft": "YaRN x8, fine-tuned at 1024",
    "resonance_yarn-ft": "Resonance-YaRN x8, fine-tuned at 1024",
}


def table(results: list[dict]) -> str:
    import math

    """Perplexity per position window, mean ± standard deviation over seeds."""
    header = " | ".join(f"{a}-{b}" for a, b in WINDOWS)
    lines = [f"| served | seeds | {header} |", "|---" * (len(WINDOWS) + 2) + "|"]
    for row, title in ROWS.items():
        runs = [r for r in results if r["row"] == row]
        if not runs:
            continue
        cells = []
        for start, end in WINDOWS:
            values = [math.exp(window_nll(r["buckets"], start, end)) for r in runs]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.fmean(values):.3f} ± {spread:.3f}")
        lines.append(f"| {title} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: list[dict], out: Path) -> Path:
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for row, title in ROWS.items():
        runs = [r["buckets"] for r in results if r["row"] == row]
        if not runs:
            continue
        centres = [(b["start"] + b["end"]) / 2 for b in runs[0]]
        means = [
            statistics.fmean(math.exp(run[i]["mean_nll"]) for run in runs)
            for i in range(len(centres))
        ]
        axis.plot(centres, means, marker="o", markersize=3, label=title, linewidth=1)
    for position, text in ((PRETRAIN_CONTEXT, "pretrained"), (FINETUNE_LENGTH, "fine-tuned")):
        axis.axvline(position, color="grey", linestyle="--", linewidth=1)
        axis.text(position + 10, axis.get_ylim()[1] * 0.95, text, color="grey", fontsize=8)
    axis.set_yscale("log")
    axis.set_xlabel(f"token position (buckets of {BUCKET})")
    axis.set_ylabel("perplexity (mean over seeds)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--scale", choices=SCALES, default="cpu")
    parser.add_argument("--out", type=Path, default=Path("results/extend_context"))
    args = parser.parse_args(argv)
    scale, out = SCALES[args.scale], args.out
    started = time.monotonic()
    corpus = out / "corpus"
    facts = write_corpus(corpus)
    cores = os.cpu_count() or 1
    base = base_checkpoint(out / "checkpoints" / "random", corpus, scale, seed=0)
    pretrain_args = [
        "--rope-type",
        "none",
        "--seq-len",
        str(PRETRAIN_CONTEXT),
        "--steps",
        str(scale.pretrain_steps),
        "--batch-size",
        str(scale.pretrain_batch),
        "--gradient-accumulation",
        "1",
        "--learning-rate",
        str(scale.pretrain_lr),
        "--warmup-steps",
        str(scale.pretrain_steps // 20),
        "--weight-decay",
        "0.1",
        "--save-steps",
        "100",
        "--seed",
        "0",
    ]
    pretrained = finetune(base, out / "checkpoints" / "pretrained", corpus, pretrain_args, cores)
    eval_documents(corpus, pretrained, scale.test_documents)
    rows: list[concurrent.futures.Future] = []

    def threads() -> int:  # one while a server is scoring (it holds the other core)
        return 1 if any(not r.done() for r in rows) else cores

    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as scorer:
        try:
            rows.append(
                scorer.submit(
                    scored,
                    "rope",
                    None,
                    extrapolated(pretrained, out / "checkpoints" / "rope"),
                    [],
                    out,
                )
            )
            for method in METHODS:
                flags = ["--rope-type", method, "--rope-factor", str(FACTOR)]
                rows.append(scorer.submit(scored, f"{method}-noft", None, pretrained, flags, out))
            for seed in range(args.seeds):
                for method in METHODS:
                    tuned = finetune(
                        pretrained,
                        out / "checkpoints" / f"{method}-seed{seed}",
                        corpus,
                        [
                            "--rope-type",
                            method,
                            "--rope-factor",
                            str(FACTOR),
                            "--seq-len",
                            str(FINETUNE_LENGTH),
                            "--steps",
                            str(scale.finetune_steps),
                            "--batch-size",
                            str(scale.finetune_batch),
                            "--gradient-accumulation",
                            "1",
                            "--learning-rate",
                            str(scale.finetune_lr),
                            "--warmup-steps",
                            str(scale.finetune_steps // 10),
                            "--save-steps",
                            "40",
                            "--seed",
                            str(seed),
                        ],
                        threads(),
                    )
                    rows.append(scorer.submit(scored, f"{method}-ft", seed, tuned, [], out))
            results = [r.result() for r in rows]
        except BaseException:
            scorer.shutdown(cancel_futures=True)
            raise
    errors = [e for r in results for e in r["errors"]]
    markdown = table(results)
    (out / "table.md").write_text(markdown + "\n")
    plot(results, out / "perplexity_by_position.png")
    run = {
        "corpus": facts,
        "scale": asdict(scale),
        "seeds": args.seeds,
        "errors": errors,
        "seconds": round(time.monotonic() - started),
    }
    (out / "run.json").write_text(json.dumps(run, indent=1))
    print(markdown)
    print(f"total: {run['seconds']} s; errors: {len(errors)}")


if __name__ == "__main__":
    main()
