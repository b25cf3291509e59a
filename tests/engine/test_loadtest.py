"""The load generator: its statistics alone, then against the real test server."""

import asyncio
import csv
import json
import subprocess
import sys

import pytest

from harness.client import metric_samples
from loadtests.api import Options, run_loadtest
from loadtests.client import RequestRecord
from loadtests.prompts import PromptBuilder
from loadtests.stats import distribution, summarize
from tests.helpers import API_KEY, MODEL_NAME, free_port


def record(ok: bool, ttft: float = 10, e2e: float = 100, tokens: int = 10, kind: str = ""):
    r = RequestRecord("concurrency", 1, 256, 0, 0.0, ok=ok, error_kind=kind)
    if ok:
        r.ttft_ms, r.e2e_ms, r.output_tokens = ttft, e2e, tokens
        r.tpot_ms = (e2e - ttft) / (tokens - 1)
        r.itl_ms = [r.tpot_ms] * (tokens - 1)
    return r


def test_summary_counts_percentiles_and_goodput():
    records = [record(True, ttft=t, e2e=10 * t) for t in range(1, 101)]
    records += [record(False, kind="http_429")] * 3 + [record(False, kind="timeout")]
    summary = summarize(records, duration_s=10.0, goodput_targets={"ttft": 50})
    assert (summary["completed"], summary["failed"]) == (100, 4)
    assert summary["errors"] == {"http_429": 3, "timeout": 1}
    assert summary["request_throughput"] == 10.0
    assert summary["output_token_throughput"] == 100.0
    assert summary["ttft_ms"]["p50"] == pytest.approx(50.5)
    assert summary["ttft_ms"]["mean"] == pytest.approx(50.5)
    assert summary["goodput"]["requests_per_s"] == 5.0  # ttft 1..50 of 100 completed
    assert distribution([]) == {"p50": None, "p90": None, "p99": None, "mean": None}


def test_prompts_have_exact_lengths_and_unique_starts(resonance_checkpoint):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resonance_checkpoint)
    builder = PromptBuilder(lambda text: len(tokenizer.encode(text)))
    lengths = [17] * 3 + [256] * 3 + [1000] * 3
    prompts = [builder.build(length, index) for index, length in enumerate(lengths)]
    assert [len(tokenizer.encode(p)) for p in prompts] == lengths
    assert len({tuple(tokenizer.encode(p)[:8]) for p in prompts}) == len(prompts)


def prompt_token_histogram(http) -> tuple[float, float]:
    text = http.get("/metrics").text
    (total,) = metric_samples(text, "resonance_request_prompt_tokens_sum")
    (count,) = metric_samples(text, "resonance_request_prompt_tokens_count")
    return total, count


def test_run_against_the_server_reports_what_was_sent(server, http, tmp_path):
    before_sum, before_count = prompt_token_histogram(http)
    options = Options(
        base_url=server.base_url,
        model=MODEL_NAME,
        api_key=API_KEY,
        prompt_tokens=[200, 700],
        output_tokens=8,
        concurrency=[1, 2],
        num_requests=5,
        warmup=1,
        goodput_ms={"ttft": 10_000},
        out=tmp_path,
    )
    summary = asyncio.run(run_loadtest(options))
    levels = summary["levels"]
    assert [(lv["load_value"], lv["prompt_tokens"]) for lv in levels] == [
        (1, 200),
        (1, 700),
        (2, 200),
        (2, 700),
    ]
    for level in levels:
        assert level["completed"] + level["failed"] == 5
        assert level["completed"] == 5, level["errors"]
        for name in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms"):
            d = level[name]
            assert 0 < d["p50"] <= d["p90"] <= d["p99"], (name, d)
        assert level["ttft_ms"]["p50"] <= level["e2e_ms"]["p50"]
        assert level["output_token_throughput"] == pytest.approx(
            8 * level["request_throughput"], rel=1e-6
        )
    # Every prompt length really went out: the server's own prompt-token histogram agrees.
    after_sum, after_count = prompt_token_histogram(http)
    sent = [200] + [p for lv in levels for p in [lv["prompt_tokens"]] * 5]  # warm-up first
    assert after_count - before_count == len(sent)
    assert after_sum - before_sum == sum(sent)
    with (tmp_path / "requests.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 20
    assert all(row["served_prompt_tokens"] == row["prompt_tokens"] for row in rows)
    assert json.loads((tmp_path / "summary.json").read_text())["levels"] == levels
    for plot in ("ttft_vs_prompt_length", "latency_distribution", "throughput_vs_load"):
        assert (tmp_path / f"{plot}.png").read_bytes()[:4] == b"\x89PNG"


def test_failing_requests_are_reported_as_errors(server, tmp_path):
    """Output that cannot fit the context: every request gets 400, the run still reports."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtests",
            "--base-url",
            server.base_url,
            "--model",
            MODEL_NAME,
            "--api-key",
            API_KEY,
            "--prompt-tokens",
            "700",
            "--output-tokens",
            "5000",
            "--request-rate",
            "20",
            "--num-requests",
            "4",
            "--warmup",
            "0",
            "--out",
            str(tmp_path),
            "--no-plots",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    (level,) = json.loads((tmp_path / "summary.json").read_text())["levels"]
    assert (level["completed"], level["failed"]) == (0, 4)
    assert level["errors"] == {"http_400": 4}
    assert "resonance-loadtest" in result.stdout  # the table


def test_locust_master_and_worker_share_the_prompt_builder(server, tmp_path):
    locustfile = "loadtests/locustfile.py"
    port = free_port()
    common = [
        "--model",
        MODEL_NAME,
        "--api-key",
        API_KEY,
        "--prompt-tokens",
        "300",
        "--output-tokens",
        "8",
    ]
    master = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            locustfile,
            "--master",
            "--headless",
            "--expect-workers",
            "1",
            "-u",
            "2",
            "-r",
            "2",
            "-t",
            "6s",
            "--host",
            server.base_url,
            "--master-bind-port",
            str(port),
            "--csv",
            str(tmp_path / "run"),
            "--only-summary",
            *common,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "locust",
                "-f",
                locustfile,
                "--worker",
                "--master-port",
                str(port),
                *common,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        master.wait(90)
        worker.wait(30)
    finally:
        master.kill()
    with (tmp_path / "run_stats.csv").open() as handle:
        stats = {row["Name"]: row for row in csv.DictReader(handle)}
    assert int(stats["/v1/completions"]["Request Count"]) > 0
    assert int(stats["/v1/completions"]["Failure Count"]) == 0
    assert float(stats["time_to_first_token"]["Median Response Time"]) > 0


def test_cache_counters_are_read_from_prometheus_text():
    from loadtests.sessions import metric_totals

    text = (
        "# HELP vllm:prefix_cache_hits_total hits\n"
        'vllm:prefix_cache_hits_total{engine="0",model_name="m"} 120.0\n'
        'vllm:prefix_cache_hits_total{engine="1",model_name="m"} 30.0\n'
        'vllm:prefix_cache_queries_total{engine="0",model_name="m"} 400.0\n'
        "vllm:prefix_cache_queries_created 17.0\n"
    )
    assert metric_totals(text) == {
        "vllm:prefix_cache_hits_total": 150.0,
        "vllm:prefix_cache_queries_total": 400.0,
    }


def test_long_document_sessions_report_first_turns_and_cached_follow_ups(server, tmp_path):
    """Two users, three turns each, over their own 300-token documents: each follow-up sends
    the conversation so far, so the server's prefix cache serves most of it."""
    from loadtests.api import run_session_load

    options = Options(
        base_url=server.base_url,
        model=MODEL_NAME,
        api_key=API_KEY,
        prompt_tokens=[],
        output_tokens=6,
        sessions=2,
        turns=3,
        document_tokens=300,
        out=tmp_path,
    )
    summary = asyncio.run(run_session_load(options))
    first, *follow_ups = summary["turns"]
    assert [row["completed"] for row in summary["turns"]] == [2, 2, 2]
    assert first["cache_share"] < 0.2  # unique documents: at most the chat template's start
    for row in follow_ups:
        assert row["cache_share"] > 0.5
        assert row["prompt_tokens_mean"] > first["prompt_tokens_mean"]  # the history grows
    assert 0 < summary["server_cache_share"] < 1
    records = json.loads((tmp_path / "requests.json").read_text())
    assert len(records) == 6 and {r["index"] for r in records} == {0, 1, 2}
    assert all(r["cached_tokens"] is not None for r in records)
