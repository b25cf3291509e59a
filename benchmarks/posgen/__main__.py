"""python -m benchmarks.posgen: train, serve and score every row of Table 1, then report.

For each task and seed: one model trained with plain RoPE (served as the RoPE and YaRN rows)
and one trained with Resonance RoPE (the Resonance RoPE and Resonance-YaRN rows); each served
by resonance-serve with the row's --rope-type and scored over HTTP, while the next model
trains. Checkpoints and per-seed results are kept in --out, so an interrupted run resumes where
it stopped.
"""

import argparse
import concurrent.futures
import json
import time
from pathlib import Path
from typing import Any

from benchmarks.posgen import model as posgen_model
from benchmarks.posgen import report, scoring, tasks, training
from harness.client import comma_list
from harness.servers import ONE_CORE, SERVER, free_port, serving

# The authors' YaRN ramp for these short sequences: with YaRN's LLM default (beta_fast 32) every
# dimension of a 64-token context would be interpolated.
YARN_BETAS = {"--yarn-beta-fast": "2", "--yarn-beta-slow": "1"}

DEFAULT_PLAN = training.TrainingPlan(
    train_sequences=10_000, epochs=3, batch_size=32, learning_rate=3e-3
)
TRAINED_ROPE_TYPES = ("default", "resonance")
# The paper's 1,000 test sequences; as many for validation.
HELD_OUT = {"validation": 1000, "test": 1000}


def serve_command(checkpoint: Path, rope_type: str, port: int, layout: tasks.Layout) -> list[str]:
    command = [
        *SERVER,
        "--model",
        str(checkpoint),
        "--port",
        str(port),
        "--served-model-name",
        "posgen",
        "--rope-type",
        rope_type,
        "--dtype",
        "float32",
        "--enforce-eager",
        "--cpu-kv-cache-space-gib",
        "1",
        "--max-queued-tokens",
        str(scoring.PROMPTS_PER_REQUEST * layout.test_length * 4),
    ]
    if rope_type in ("yarn", "resonance_yarn"):
        command += [
            "--rope-factor",
            repr(layout.factor),
            "--original-max-position-embeddings",
            str(layout.train_length),
            *[a for kv in YARN_BETAS.items() for a in kv],
        ]
    return command


def trained_checkpoint(
    out: Path, task: str, rope: str, seed: int, data: dict, args: argparse.Namespace
) -> Path:
    """The checkpoint of one training, trained now unless a finished one is in ``out``."""
    directory = out / "checkpoints" / f"{task}-{rope}-seed{seed}"
    if (directory / "posgen.json").exists():
        return directory
    layout = args.layout
    model, tokenizer = posgen_model.build_model(
        args.size, rope, tasks.MODULUS, layout.test_length, seed
    )
    label = f"{task} {rope} seed {seed}"
    facts = training.train(
        model, data["train"], args.plan, seed, label, layout.prefix, args.threads
    )
    facts["validation_accuracy"] = training.teacher_forced_accuracy(
        model, data["validation"], layout.prefix
    )
    facts |= {
        "task": task,
        "rope_type": rope,
        "seed": seed,
        "layout": layout.name,
        "train_length": layout.train_length,
        "size": vars(args.size),
        "plan": vars(args.plan),
    }
    print(
        f"trained {directory.name}: validation accuracy {facts['validation_accuracy']:.3f}, "
        f"{facts['seconds']:.0f} s",
        flush=True,
    )
    return posgen_model.save(model, tokenizer, directory, facts)


def scored_row(
    out: Path, checkpoint: Path, row: str, served: str, test: list[list[int]], layout: tasks.Layout
) -> dict[str, Any]:
    """One row's result for one checkpoint, scored now unless already in ``out``."""
    result_file = out / "results" / f"{checkpoint.name}-{served}.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    from tqdm import tqdm

    port = free_port()
    started = time.monotonic()
    log = out / "logs" / f"{result_file.stem}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    command = serve_command(checkpoint, served, port, layout)
    with serving(command, port, log, env=ONE_CORE, timeout=600) as server:
        startup = time.monotonic() - started
        with tqdm(total=len(test), desc=f"score {row}", unit="seq", leave=False) as bar:
            marks = scoring.score(server.base_url, "posgen", test, bar)
    trained = json.loads((checkpoint / "posgen.json").read_text())
    result = {
        "row": row,
        "task": trained["task"],
        "seed": trained["seed"],
        "served_rope_type": served,
        "checkpoint": checkpoint.name,
        "test_sequences": len(test),
        "server_startup_s": round(startup, 1),
        "validation_accuracy": trained["validation_accuracy"],
        "layout": layout.name,
        **scoring.summary(marks, layout.train_length, layout.prefix),
    }
    result_file.parent.mkdir(parents=True, exist_ok=True)
    result_file.write_text(json.dumps(result, indent=1))
    print(
        f"{checkpoint.name} as {row}: in-distribution {result['id_accuracy']:.3f}, "
        f"OOD {result['ood_accuracy']:.3f}",
        flush=True,
    )
    return result


def _train_and_submit(
    args: argparse.Namespace, sizes: dict, scorer: concurrent.futures.Executor, rows: list
) -> None:
    """Train each checkpoint in turn, handing its rows to ``scorer`` as soon as it is saved."""
    for task in comma_list(args.tasks):
        for seed in range(args.seeds):
            seeds = tasks.split_seeds(sizes, shuffle_seed=seed)
            layout, start = args.layout, posgen_model.start_token_id(tasks.MODULUS)
            data = {
                name: [layout.tokens(task, s, layout.train_length, start) for s in seeds[name]]
                for name in ("train", "validation")
            }
            test = [layout.tokens(task, s, layout.test_length, start) for s in seeds["test"]]
            for rope in TRAINED_ROPE_TYPES:
                checkpoint = trained_checkpoint(args.out, task, rope, seed, data, args)
                if args.train_only:
                    continue
                for row, (trained_with, served) in report.ROWS.items():
                    if trained_with == rope:
                        job = (args.out, checkpoint, row, served, test, layout)
                        rows.append(scorer.submit(scored_row, *job))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(tasks.TASKS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, help="override the plan's epochs")
    parser.add_argument(
        "--paper-scale",
        action="store_true",
        help="the paper's model, data and 150 epochs (a GPU host)",
    )
    parser.add_argument(
        "--train-only", action="store_true", help="train; a later run serves and scores"
    )
    parser.add_argument(
        "--layout",
        choices=tasks.LAYOUTS,
        default="plain",
        help="authors: start token + seeds, 65 tokens, x257/65",
    )
    parser.add_argument("--out", type=Path, default=None, help="default: results/posgen[-LAYOUT]")
    args = parser.parse_args(argv)
    args.layout = tasks.LAYOUTS[args.layout]
    if args.out is None:
        suffix = "" if args.layout.name == "plain" else f"-{args.layout.name}"
        args.out = Path(f"results/posgen{suffix}")
    args.size = posgen_model.PAPER_SIZE if args.paper_scale else posgen_model.DEFAULT_SIZE
    args.plan = training.PAPER_PLAN if args.paper_scale else DEFAULT_PLAN
    if args.epochs:
        args.plan = training.TrainingPlan(**{**vars(args.plan), "epochs": args.epochs})
    sizes = {"train": args.plan.train_sequences, **HELD_OUT}
    started = time.monotonic()
    # Each checkpoint is served and scored in a second thread while the next one trains: the
    # engine is bound to one core, the training runs on the other.
    import torch

    rows: list[concurrent.futures.Future] = []
    cores = torch.get_num_threads()
    # One training thread while a server is scoring: a second would share the engine's core and
    # wait on it at every operation; all of them otherwise.
    args.threads = lambda: 1 if any(not row.done() for row in rows) else cores
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as scorer:
        try:
            _train_and_submit(args, sizes, scorer, rows)
            results = [row.result() for row in rows]
        except BaseException:  # Ctrl-C: the row being scored ends (its server stopped), no more
            scorer.shutdown(cancel_futures=True)
            raise
    print(f"total: {time.monotonic() - started:.0f} s", flush=True)
    if args.train_only:
        return
    tables = report.tables(results, args.layout)
    (args.out / "tables.md").write_text(tables + "\n")
    report.plot(results, args.layout, args.out / "accuracy_by_position.png")
    print(tables)


if __name__ == "__main__":
    main()
