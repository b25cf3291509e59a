"""What an evaluation leaves in its directory, what it prints, and plots across runs."""

import csv
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from rich.console import Console
from rich.table import Table


def write(out: Path, summary: dict[str, Any], records: list[dict[str, Any]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    with (out / "samples.jsonl").open("w") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    if summary["evaluation"] == "perplexity":
        _perplexity_csv(out / "perplexity.csv", summary)
        if summary["buckets"]:
            plot_perplexity([summary], out / "perplexity_by_position.png")
    else:
        _passkey_csv(out / "passkey.csv", summary)
        if summary["cells"]:
            plot_passkey(summary, out / "passkey.png")


def _perplexity_csv(path: Path, summary: dict[str, Any]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["length", "start", "end", "mean_nll", "perplexity"])
        for length, row in summary["lengths"].items():
            writer.writerow([length, 0, length, row["mean_nll"], row["perplexity"]])
            for bucket in summary["buckets"][length]:
                writer.writerow(
                    [
                        length,
                        bucket["start"],
                        bucket["end"],
                        bucket["mean_nll"],
                        bucket["perplexity"],
                    ]
                )


def _passkey_csv(path: Path, summary: dict[str, Any]) -> None:
    cells = summary["cells"]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(cells[0]) if cells else ["length"])
        writer.writeheader()
        writer.writerows(cells)


def print_table(summary: dict[str, Any]) -> None:
    console = Console()
    title = f"{summary['evaluation']}: {summary['label']} ({summary['base_url']})"
    table = Table(title=title)
    if summary["evaluation"] == "perplexity":
        for column in ("length", "documents", "tokens scored", "mean NLL", "perplexity"):
            table.add_column(column, justify="right")
        for length, row in summary["lengths"].items():
            table.add_row(
                length,
                str(row["documents"]),
                str(row["tokens"]),
                _fmt(row["mean_nll"]),
                _fmt(row["perplexity"]),
            )
    else:
        for column in ("length", "depth", "samples", "exact match", "key log-prob", "mean rank"):
            table.add_column(column, justify="right")
        for cell in summary["cells"]:
            table.add_row(
                str(cell["length"]),
                f"{cell['depth']:g}",
                str(cell["samples"]),
                _fmt(cell["accuracy"]),
                _fmt(cell["mean_key_logprob"]),
                _fmt(cell["mean_rank"]),
            )
    console.print(table)
    if summary.get("rope_tables"):
        tables = ", ".join(f"{name} {count}" for name, count in summary["rope_tables"].items())
        console.print(f"RoPE policy {summary.get('rope_policy')}; answers by table: {tables}")
    if summary["errors"]:
        console.print(
            f"[red]{len(summary['errors'])} request(s) failed[/red]; first: {summary['errors'][0]}"
        )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def plot_perplexity(summaries: list[dict[str, Any]], out: Path) -> None:
    """Perplexity against position, one line per run (its longest length)."""
    figure, axes = plt.subplots(figsize=(8, 4.5))
    for summary in summaries:
        if not summary["buckets"]:
            continue
        longest = max(summary["buckets"], key=int)
        rows = summary["buckets"][longest]
        axes.plot(
            [(r["start"] + r["end"]) / 2 for r in rows],
            [r["perplexity"] for r in rows],
            marker="o",
            markersize=3,
            label=summary["label"],
        )
    trained = next((s.get("trained_context") for s in summaries if s.get("trained_context")), None)
    if trained:
        axes.axvline(trained, color="grey", linestyle="--", label=f"trained length {trained}")
    axes.set_xlabel("token position")
    axes.set_ylabel("perplexity (per position bucket)")
    axes.set_yscale("log")
    axes.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)


def plot_passkey(summary: dict[str, Any], out: Path) -> None:
    """Exact-match accuracy and mean key log-probability, length x depth."""
    lengths = sorted({c["length"] for c in summary["cells"]})
    depths = sorted({c["depth"] for c in summary["cells"]})
    figure, panels = plt.subplots(1, 2, figsize=(11, 4))
    for panel, field, title in (
        (panels[0], "accuracy", "exact match"),
        (panels[1], "mean_key_logprob", "log p(true key)"),
    ):
        grid = [[_cell(summary, length, depth, field) for depth in depths] for length in lengths]
        image = panel.imshow(grid, aspect="auto", cmap="viridis", origin="lower")
        panel.set_xticks(range(len(depths)), [f"{d:g}" for d in depths])
        panel.set_yticks(range(len(lengths)), [str(n) for n in lengths])
        panel.set_xlabel("depth of the key")
        panel.set_ylabel("prompt tokens")
        panel.set_title(f"{summary['label']}: {title}")
        figure.colorbar(image, ax=panel)
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)


def _cell(summary: dict[str, Any], length: int, depth: float, field: str) -> float:
    for cell in summary["cells"]:
        if cell["length"] == length and cell["depth"] == depth and cell[field] is not None:
            return cell[field]
    return float("nan")


def plot_runs(directories: list[Path], out: Path) -> None:
    """Overlay runs: perplexity by position, or the key's log-probability by length."""
    summaries = [json.loads((d / "summary.json").read_text()) for d in directories]
    kinds = {s["evaluation"] for s in summaries}
    if len(kinds) != 1:
        raise ValueError("plot runs of one evaluation at a time (perplexity or passkey)")
    if kinds == {"perplexity"}:
        plot_perplexity(summaries, out)
        return
    figure, axes = plt.subplots(figsize=(8, 4.5))
    for summary in summaries:
        lengths = sorted({c["length"] for c in summary["cells"]})
        means = []
        for length in lengths:
            values = [
                c["mean_key_logprob"]
                for c in summary["cells"]
                if c["length"] == length and c["mean_key_logprob"] is not None
            ]
            means.append(sum(values) / len(values) if values else float("nan"))
        axes.plot(lengths, means, marker="o", label=summary["label"])
    axes.set_xlabel("prompt tokens")
    axes.set_ylabel("mean log p(true key), all depths")
    axes.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)
