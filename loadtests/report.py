"""What a run leaves behind: summary.json, requests.csv, PNG plots and a terminal table."""

import csv
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from loadtests.client import RequestRecord


def write_json(out: Path, summary: dict[str, Any], records: list[RequestRecord]) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "requests.json").write_text(json.dumps([r.__dict__ for r in records], indent=1))


def write_csv(out: Path, records: list[RequestRecord]) -> None:
    rows = [r.row() for r in records]
    if not rows:
        return
    with (out / "requests.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def print_table(levels: list[dict[str, Any]], console: Console | None = None) -> None:
    table = Table(title="resonance-loadtest")
    for column in (
        "load",
        "prompt",
        "ok",
        "failed",
        "req/s",
        "out tok/s",
        "TTFT p50",
        "TTFT p99",
        "ITL p50",
        "TPOT p50",
        "E2E p50",
        "E2E p99",
    ):
        table.add_column(column, justify="right")
    for level in levels:
        table.add_row(
            f"{level['load']}={level['load_value']:g}",
            str(level["prompt_tokens"]),
            str(level["completed"]),
            str(level["failed"]),
            f"{level['request_throughput']:.2f}",
            f"{level['output_token_throughput']:.1f}",
            _ms(level["ttft_ms"]["p50"]),
            _ms(level["ttft_ms"]["p99"]),
            _ms(level["itl_ms"]["p50"]),
            _ms(level["tpot_ms"]["p50"]),
            _ms(level["e2e_ms"]["p50"]),
            _ms(level["e2e_ms"]["p99"]),
        )
    console = console or Console(width=160)
    console.print(table)
    for level in levels:
        if tables := level.get("rope_tables"):
            served = ", ".join(
                f"{name} {row['requests']} (prefix cache {_share(row['prefix_cache_hit_rate'])})"
                for name, row in tables.items()
            )
            console.print(f"{level['load']}={level['load_value']:g}: RoPE tables: {served}")


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def plot(out: Path, levels: list[dict[str, Any]], records: list[RequestRecord]) -> list[Path]:
    """TTFT against prompt length, the latency distribution, throughput against load."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    loads = sorted({(lv["load"], lv["load_value"]) for lv in levels})

    figure, axis = plt.subplots(figsize=(6, 4))
    for load, value in loads:
        points = sorted(
            (lv["prompt_tokens"], lv["ttft_ms"]["p50"])
            for lv in levels
            if (lv["load"], lv["load_value"]) == (load, value) and lv["ttft_ms"]["p50"] is not None
        )
        if points:
            axis.plot(*zip(*points, strict=True), marker="o", label=f"{load}={value:g}")
    axis.set(xlabel="prompt tokens", ylabel="TTFT p50 (ms)", title="Time to first token")
    axis.legend()
    paths.append(_save(figure, out / "ttft_vs_prompt_length.png"))

    figure, axis = plt.subplots(figsize=(6, 4))
    e2e = [r.e2e_ms for r in records if r.ok and r.e2e_ms is not None]
    ttft = [r.ttft_ms for r in records if r.ok and r.ttft_ms is not None]
    axis.hist([e2e, ttft], bins=30, label=["end to end", "first token"])
    axis.set(xlabel="latency (ms)", ylabel="requests", title="Latency distribution")
    axis.legend()
    paths.append(_save(figure, out / "latency_distribution.png"))

    figure, axis = plt.subplots(figsize=(6, 4))
    for prompt_tokens in sorted({lv["prompt_tokens"] for lv in levels}):
        points = sorted(
            (lv["load_value"], lv["output_token_throughput"])
            for lv in levels
            if lv["prompt_tokens"] == prompt_tokens
        )
        axis.plot(*zip(*points, strict=True), marker="o", label=f"prompt {prompt_tokens}")
    axis.set(
        xlabel=levels[0]["load"] if levels else "load",
        ylabel="output tokens/s",
        title="Throughput against load",
    )
    axis.legend()
    paths.append(_save(figure, out / "throughput_vs_load.png"))
    return paths


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    import matplotlib.pyplot as plt

    plt.close(figure)
    return path
