"""The load generator as a library: `Options` and the runs (`run_loadtest`, `run_session_load`)."""

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from loadtests import report
from loadtests.client import RequestRecord
from loadtests.prompts import PromptBuilder
from loadtests.runner import Level, Workload, run_level, warm_up
from loadtests.sessions import SessionPlan, run_sessions
from loadtests.stats import summarize


@dataclass
class Options:
    base_url: str
    model: str
    prompt_tokens: list[int]
    api_key: str | None = None
    mix: bool = False  # one level mixing the prompt lengths, rather than a level per length
    endpoint: str = "completions"
    output_tokens: int = 64
    concurrency: list[int] = field(default_factory=list)
    request_rate: list[float] = field(default_factory=list)
    num_requests: int = 32
    duration_s: float = 300.0
    warmup: int = 2
    timeout_s: float = 600.0
    goodput_ms: dict[str, float] = field(default_factory=dict)
    out: Path | None = None
    plots: bool = True
    tokenizer: str | None = None
    sessions: int = 0  # users of the long-document session workload (0: the sweep)
    turns: int = 3
    document_tokens: int = 8192
    first_document: int = 0  # user N holds document first_document + N (other runs: others)


def _builder(options: Options, client: httpx.Client) -> PromptBuilder:
    if options.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(options.tokenizer)
        return PromptBuilder(lambda text: len(tokenizer.encode(text)))
    return PromptBuilder.from_server(client, options.model)


def _clients(options: Options) -> tuple[httpx.Client, httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {options.api_key}"} if options.api_key else {}
    timeout = httpx.Timeout(options.timeout_s, connect=30)
    # Idle connections are dropped after 2 s, before a server's keep-alive timeout (5 s for
    # uvicorn, vLLM's included) can close one just as it is reused between levels.
    limits = httpx.Limits(
        max_connections=None, max_keepalive_connections=None, keepalive_expiry=2.0
    )
    common = {"base_url": options.base_url, "headers": headers, "timeout": timeout}
    return httpx.Client(**common, limits=limits), httpx.AsyncClient(**common, limits=limits)


async def run_session_load(options: Options) -> dict[str, Any]:
    """The long-document session workload; writes its report to ``options.out`` if set."""
    plan = SessionPlan(
        options.sessions, options.turns, options.document_tokens, options.output_tokens
    )
    sync, client = _clients(options)
    with sync:
        builder = _builder(options, sync)
        async with client:
            result = await run_sessions(
                client,
                options.model,
                plan,
                lambda user: builder.build(plan.document_tokens, options.first_document + user),
            )
    summary = {
        "base_url": options.base_url,
        "model": options.model,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **result["summary"],
    }
    if options.out is not None:
        options.out.mkdir(parents=True, exist_ok=True)
        report.write_json(options.out, summary, result["records"])
        report.write_csv(options.out, result["records"])
    return summary


async def run_loadtest(options: Options) -> dict[str, Any]:
    """Run every level; write the report to ``options.out`` if set; return the summary."""
    shapes: list[int | tuple[int, ...]] = list(options.prompt_tokens)
    if options.mix:
        shapes = [tuple(options.prompt_tokens)]
    levels = [Level("concurrency", c, p) for c in options.concurrency for p in shapes]
    levels += [Level("request_rate", r, p) for r in options.request_rate for p in shapes]
    sync, client = _clients(options)
    with sync:
        builder = _builder(options, sync)
        work = Workload(
            options.endpoint,
            options.model,
            options.output_tokens,
            options.num_requests,
            options.duration_s,
            builder.build,
        )
        async with client:
            await warm_up(client, work, min(options.prompt_tokens), options.warmup)
            results: list[dict[str, Any]] = []
            records: list[RequestRecord] = []
            next_index = 0
            for level in levels:
                level_records, seconds = await run_level(client, work, level, next_index)
                next_index += options.num_requests
                records += level_records
                summary = summarize(level_records, seconds, options.goodput_ms)
                results.append(
                    {
                        "load": level.load,
                        "load_value": level.value,
                        "prompt_tokens": level.label,
                        **summary,
                    }
                )
    summary = {
        "base_url": options.base_url,
        "model": options.model,
        "endpoint": options.endpoint,
        "output_tokens": options.output_tokens,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "levels": results,
    }
    if options.out is not None:
        options.out.mkdir(parents=True, exist_ok=True)
        report.write_json(options.out, summary, records)
        report.write_csv(options.out, records)
        if options.plots and results:
            report.plot(options.out, results, records)
    return summary
