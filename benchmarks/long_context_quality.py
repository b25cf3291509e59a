"""Does extended context work through the API? The demo model under each RoPE scaling, scored
with resonance-eval (perplexity by position, passkey), tables and plots for docs/RESULTS.md.

SmolLM2-135M-Instruct (trained on 8192 positions, not fine-tuned for any scaling) is served by
resonance-serve once per configuration; the evaluations talk to it over HTTP only.

    python -m benchmarks.long_context_quality [--configs none,yarn:2,...] [--out DIR]

Prompt log-probabilities over the 49K vocabulary dominate the time (docs/RESULTS.md section 6
gives it), so by default each configuration scores one document of 12K tokens (its
per-position buckets cover every shorter position) and one passkey prompt of 4000; the flags
take more on a faster host.
"""

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

from evals.cli import main as resonance_eval_main
from evals.report import plot_runs
from harness.client import comma_list
from harness.servers import SERVER, free_port, serving

TRAINED = 8192
DEFAULT_CONFIGS = ",".join(
    ["none"]
    + [
        f"{rope}:{factor}"
        for factor in (2, 4)
        for rope in ("yarn", "resonance_yarn", "ntk", "resonance_ntk")
    ]
)


def resonance_eval(argv: list[str]) -> None:
    """One evaluation; its failures are in its report (it exits 1 when a request failed)."""
    try:
        resonance_eval_main(argv)
    except SystemExit as stop:
        if stop.code not in (0, None):
            print(f"resonance-eval {argv[0]} reported failures", flush=True)


WINDOWS = [(0, 4096), (4096, 8192), (8192, 12288), (12288, 16384), (16384, 32768)]


def _window_perplexity(buckets: list[dict], start: int, end: int) -> float | None:
    rows = [b for b in buckets if b["start"] >= start and b["end"] <= end]
    tokens = sum(b["end"] - b["start"] for b in rows)
    if not rows:
        return None
    return math.exp(sum(b["mean_nll"] * (b["end"] - b["start"]) for b in rows) / tokens)


def markdown(out: Path, runs: list[dict]) -> str:
    """The tables for docs/RESULTS.md, from the runs' summary.json files."""
    rows, keys = [], []
    for run in runs:
        directory = Path(run["directory"])
        summary = json.loads((directory / "perplexity" / "summary.json").read_text())
        (buckets,) = summary["buckets"].values()
        cells = [_window_perplexity(buckets, start, end) for start, end in WINDOWS]
        rows.append((run, summary["max_model_len"], cells))
        passkey = json.loads((directory / "passkey" / "summary.json").read_text())
        keys += [(run["label"], cell) for cell in passkey["cells"]]
    shown = [i for i in range(len(WINDOWS)) if any(cells[i] is not None for *_, cells in rows)]
    titles = [f"{WINDOWS[i][0] // 1024}-{WINDOWS[i][1] // 1024}K" for i in shown]
    lines = [
        "| configuration | served | start-up (s) | perplexity " + " | ".join(titles) + " |",
        "|---|---|---|" + "---|" * len(shown),
    ]
    for run, served, cells in rows:
        values = ["-" if cells[i] is None else f"{cells[i]:.2f}" for i in shown]
        lines.append(
            f"| {run['label']} | {served} | {run['startup_s']} | " + " | ".join(values) + " |"
        )
    lines += [
        "",
        "| configuration | prompt tokens | depth | exact match | log p(key) | rank of "
        "the key (1 = best) |",
        "|---|---|---|---|---|---|",
    ]
    for label, cell in keys:
        rank = "-" if cell["mean_rank"] is None else f"{cell['mean_rank']:.1f}"
        logprob = "-" if cell["mean_key_logprob"] is None else f"{cell['mean_key_logprob']:.2f}"
        accuracy = "-" if cell["accuracy"] is None else f"{cell['accuracy']:.2f}"
        lines.append(
            f"| {label} | {cell['length']} | {cell['depth']:g} | {accuracy} | {logprob} | {rank} |"
        )
    plot_runs([Path(r["directory"]) / "perplexity" for r in runs], out / "perplexity.png")
    plot_runs([Path(r["directory"]) / "passkey" for r in runs], out / "passkey.png")
    return "\n".join(lines)


def served_length(factor: float) -> int:
    return int(TRAINED * factor)


def run_config(rope: str, cache_dir: Path, out: Path, args: argparse.Namespace) -> dict:
    rope_type, _, factor_text = rope.partition(":")
    factor = float(factor_text or 1)
    label = rope_type if rope_type == "none" else f"{rope_type} x{factor:g}"
    port = free_port()
    command = [
        *SERVER,
        "--port",
        str(port),
        "--cache-dir",
        str(cache_dir),
        "--rope-type",
        rope_type,
        "--enforce-eager",
        "--cpu-kv-cache-space-gib",
        "4",
        "--max-num-seqs",
        "2",
        "--request-timeout",
        "3600",
    ]
    if rope_type != "none":
        command += ["--rope-factor", str(factor)]
    longest = min(served_length(factor), args.longest) - 8  # room for the generated token
    lengths = [n for n in args.passkey_lengths if n < longest]
    started = time.monotonic()
    log = out / f"{label.replace(' ', '_')}.log"
    common = [
        "--base-url",
        "",
        "--model",
        "smollm2-135m-instruct",
        "--label",
        label,
        "--trained-context",
        str(TRAINED),
    ]
    with serving(command, port, log, timeout=900) as server:
        common[1] = server.base_url
        startup = time.monotonic() - started
        directory = out / label.replace(" ", "_")
        resonance_eval(
            [
                "perplexity",
                *common,
                "--lengths",
                str(longest),
                "--documents",
                str(args.documents),
                "--bucket",
                "1024",
                "--out",
                str(directory / "perplexity"),
            ]
        )
        resonance_eval(
            [
                "passkey",
                *common,
                "--lengths",
                ",".join(map(str, lengths)),
                "--depths",
                args.depths,
                "--samples",
                str(args.samples),
                "--candidates",
                str(args.candidates),
                "--out",
                str(directory / "passkey"),
            ]
        )
    return {"label": label, "startup_s": round(startup, 1), "directory": str(directory)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=DEFAULT_CONFIGS)
    parser.add_argument("--documents", type=int, default=1)
    parser.add_argument("--longest", type=int, default=12288, help="longest prompt scored")
    parser.add_argument("--passkey-lengths", default="4000")
    parser.add_argument("--depths", default="0.5")
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--candidates", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("results/long-context-quality"))
    args = parser.parse_args()
    args.passkey_lengths = comma_list(args.passkey_lengths, int)
    args.out.mkdir(parents=True, exist_ok=True)
    runs = []
    with tempfile.TemporaryDirectory() as cache:
        for rope in comma_list(args.configs):
            runs.append(run_config(rope, Path(cache), args.out, args))
            (args.out / "runs.json").write_text(json.dumps(runs, indent=2))
            print(json.dumps(runs[-1]), flush=True)
    tables = markdown(args.out, runs)
    (args.out / "tables.md").write_text(tables + "\n")
    print(tables)


if __name__ == "__main__":
    main()
