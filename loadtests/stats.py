"""Percentiles, throughput and goodput of a level's request records (pure functions)."""

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from loadtests.client import RequestRecord


def distribution(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None, "mean": None}
    array = np.asarray(values, dtype=np.float64)
    p50, p90, p99 = np.percentile(array, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(array.mean())}


def meets(record: RequestRecord, targets: dict[str, float]) -> bool:
    """Whether a completed request met every latency target (ms): ttft, tpot, e2e."""
    values = {"ttft": record.ttft_ms, "tpot": record.tpot_ms, "e2e": record.e2e_ms}
    return all(
        values[name] is not None and values[name] <= limit for name, limit in targets.items()
    )


def summarize(
    records: Sequence[RequestRecord], duration_s: float, goodput_targets: dict[str, float]
) -> dict[str, Any]:
    done = [r for r in records if r.ok]
    output_tokens = sum(r.output_tokens for r in done)
    summary: dict[str, Any] = {
        "completed": len(done),
        "failed": len(records) - len(done),
        "errors": dict(Counter(r.error_kind for r in records if not r.ok)),
        "duration_s": duration_s,
        "request_throughput": len(done) / duration_s if duration_s > 0 else 0.0,
        "output_token_throughput": output_tokens / duration_s if duration_s > 0 else 0.0,
        "ttft_ms": distribution([r.ttft_ms for r in done if r.ttft_ms is not None]),
        "itl_ms": distribution([v for r in done for v in r.itl_ms]),
        "tpot_ms": distribution([r.tpot_ms for r in done if r.tpot_ms is not None]),
        "e2e_ms": distribution([r.e2e_ms for r in done if r.e2e_ms is not None]),
    }
    tables = sorted({r.rope_table for r in done if r.rope_table})
    if tables:  # resonance-serve said which RoPE table served each request
        summary["rope_tables"] = {table: _by_table(done, table) for table in tables}
    if goodput_targets:
        good = sum(meets(r, goodput_targets) for r in done)
        summary["goodput"] = {
            "targets_ms": goodput_targets,
            "requests_per_s": good / duration_s if duration_s > 0 else 0.0,
            "share": good / len(records) if records else 0.0,
        }
    return summary


def _by_table(done: Sequence[RequestRecord], table: str) -> dict[str, Any]:
    """Requests one RoPE table served, and the share of their prompt tokens that its prefix
    cache served (each table's cache blocks are its own)."""
    mine = [r for r in done if r.rope_table == table]
    prompt = sum(r.served_prompt_tokens for r in mine)
    cached = sum(r.cached_tokens or 0 for r in mine)
    return {"requests": len(mine), "prefix_cache_hit_rate": cached / prompt if prompt else None}
