"""Table 1's layout from the per-seed results, beside the paper's numbers, and the plot."""

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.posgen.tasks import TASKS, Layout

# Row label -> (rope type the model trained with, rope type it is served with).
ROWS: dict[str, tuple[str, str]] = {
    "RoPE": ("default", "none"),
    "Resonance RoPE": ("resonance", "resonance"),
    "YaRN (s=4)": ("default", "yarn"),
    "Resonance-YaRN (s=4)": ("resonance", "resonance_yarn"),
}
# Table 1 of the paper: OOD accuracy (%), mean over 5 seeds.
PAPER_OOD = {
    "RoPE": {"recursive": 65.29, "cot": 69.56, "semi_recursive": 17.96},
    "Resonance RoPE": {"recursive": 62.64, "cot": 75.25, "semi_recursive": 29.78},
    "YaRN (s=4)": {"recursive": 95.93, "cot": 98.71, "semi_recursive": 33.70},
    "Resonance-YaRN (s=4)": {"recursive": 98.30, "cot": 99.58, "semi_recursive": 48.46},
}
BUCKET = 4  # target positions per point of the plot
TASK_TITLES = {"recursive": "Recursive", "cot": "CoT", "semi_recursive": "Semi-recursive"}


def _cell(values: Sequence[float]) -> str:
    if not values:
        return "-"
    mean = 100 * statistics.fmean(values)
    spread = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.2f} ± {spread:.2f}"


def tables(results: Sequence[dict[str, Any]], layout: Layout) -> str:
    """Markdown: OOD accuracy beside the paper's, then in-distribution accuracy (mean ± std)."""
    tasks = [t for t in TASKS if any(r["task"] == t for r in results)]
    seeds = sorted({r["seed"] for r in results})
    opening = "a start token, then the seeds" if layout.start_token else "the seeds first"
    lines = [
        f"Layout `{layout.name}`: {opening}; trained on {layout.train_length} tokens, tested "
        f"on {layout.test_length}; YaRN rows served at factor {layout.factor:.4g}.",
        "",
        f"OOD accuracy (%), targets x_64 .. x_255, mean ± standard deviation over "
        f"{len(seeds)} seeds ({', '.join(map(str, seeds))}); the paper's in brackets.",
        "",
        "| method | " + " | ".join(TASK_TITLES[t] for t in tasks) + " |",
        "|---" * (len(tasks) + 1) + "|",
    ]
    for row in ROWS:
        cells = []
        for task in tasks:
            values = [r["ood_accuracy"] for r in results if r["row"] == row and r["task"] == task]
            cells.append(f"{_cell(values)} ({PAPER_OOD[row][task]:.2f})")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "In-distribution accuracy (%), targets x_4 .. x_63, same runs:",
        "",
        "| method | " + " | ".join(TASK_TITLES[t] for t in tasks) + " |",
        "|---" * (len(tasks) + 1) + "|",
    ]
    for row in ROWS:
        cells = [
            _cell([r["id_accuracy"] for r in results if r["row"] == row and r["task"] == t])
            for t in tasks
        ]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results: Sequence[dict[str, Any]], layout: Layout, out: Path) -> Path:
    """Accuracy by position, one panel per task, the trained length marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = [t for t in TASKS if any(r["task"] == t for r in results)]
    figure, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for axis, task in zip(axes[0], tasks, strict=True):
        for row in ROWS:
            runs = [r["by_position"] for r in results if r["row"] == row and r["task"] == task]
            if not runs:
                continue
            # Mean over seeds and over each BUCKET consecutive targets (semi-recursive models
            # can be right at one parity of the position and at chance at the other).
            starts = range(layout.prefix, len(runs[0]), BUCKET)
            means = [
                statistics.fmean(run[p] for run in runs for p in range(start, start + BUCKET))
                for start in starts
            ]
            centres = [start + (BUCKET - 1) / 2 for start in starts]
            axis.plot(centres, [100 * m for m in means], label=row, linewidth=1)
        trained = layout.train_length
        axis.axvline(trained, color="grey", linestyle="--", linewidth=1)
        axis.text(trained + 2, 3, "trained length", color="grey", fontsize=8)
        axis.set_title(TASK_TITLES[task])
        axis.set_xlabel(f"position of the target token (mean over {BUCKET})")
        axis.set_ylim(0, 102)
    axes[0][0].set_ylabel("teacher-forced accuracy (%)")
    axes[0][-1].legend(fontsize=8, loc="best")
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out
