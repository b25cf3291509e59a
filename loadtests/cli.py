"""``resonance-loadtest``: sweep prompt lengths and load against an OpenAI-compatible server."""

import argparse
import asyncio
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from loadtests import report
from loadtests.client import RequestRecord
from loadtests.prompts import PromptBuilder
from loadtests.runner import Level, Workload, run_level, warm_up
from loadtests.sessions import SessionPlan, print_sessions, run_sessions
from loadtests.stats import summarize


@dataclass
class Options:
    base_url: str
    model: str
    prompt_tokens: list[int]
    api_key: str | None = None
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


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def _floats(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part]


def _targets(text: str) -> dict[str, float]:
    targets = {}
    for part in text.split(","):
        name, _, value = part.partition(":")
        if name not in ("ttft", "tpot", "e2e") or not value:
            raise argparse.ArgumentTypeError(f"goodput target {part!r}: use ttft|tpot|e2e:MS")
        targets[name] = float(value)
    return targets


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="resonance-loadtest", description=__doc__)
    parser.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8000")
    parser.add_argument("--model", required=True)
    parser.add_argument("--api-key")
    parser.add_argument("--endpoint", choices=("completions", "chat"), default="completions")
    parser.add_argument("--prompt-tokens", type=_ints, default=[1024], help="e.g. 1024,4096")
    parser.add_argument("--output-tokens", type=int, default=64)
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--concurrency", type=_ints, help="clients at once, e.g. 1,4,16")
    load.add_argument("--request-rate", type=_floats, help="Poisson requests/s, e.g. 0.5,1,2")
    parser.add_argument("--num-requests", type=int, default=32, help="per level")
    parser.add_argument("--duration", type=float, default=300.0, help="seconds, per level")
    parser.add_argument("--warmup", type=int, default=2, help="uncounted requests first")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    parser.add_argument("--goodput", type=_targets, default={}, help="e.g. ttft:2000,tpot:100")
    parser.add_argument("--tokenizer", help="local tokenizer to count with (default: /tokenize)")
    parser.add_argument("--out", type=Path, default=Path("loadtest-results"))
    parser.add_argument("--no-plots", action="store_true")
    sessions = parser.add_argument_group(
        "long-document sessions", "each of N users asks --turns questions about its own document"
    )
    sessions.add_argument("--sessions", type=int, default=0, metavar="N", help="users at once")
    sessions.add_argument("--turns", type=int, default=3, help="questions per user")
    sessions.add_argument("--document-tokens", type=int, default=8192)
    args = parser.parse_args(argv)
    return Options(
        base_url=args.base_url.rstrip("/"),
        model=args.model,
        prompt_tokens=args.prompt_tokens,
        api_key=args.api_key,
        endpoint=args.endpoint,
        output_tokens=args.output_tokens,
        concurrency=args.concurrency or ([] if args.request_rate else [1]),
        request_rate=args.request_rate or [],
        num_requests=args.num_requests,
        duration_s=args.duration,
        warmup=args.warmup,
        timeout_s=args.timeout,
        goodput_ms=args.goodput,
        out=args.out,
        plots=not args.no_plots,
        tokenizer=args.tokenizer,
        sessions=args.sessions,
        turns=args.turns,
        document_tokens=args.document_tokens,
    )


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
                client, options.model, plan, lambda user: builder.build(plan.document_tokens, user)
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
    levels = [
        Level("concurrency", c, p) for c in options.concurrency for p in options.prompt_tokens
    ]
    levels += [
        Level("request_rate", r, p) for r in options.request_rate for p in options.prompt_tokens
    ]
    sync, client = _clients(options)
    with sync:
        builder = _builder(options, sync)
        work = Workload(
            options.endpoint, options.model, options.output_tokens, options.num_requests,
            options.duration_s, builder.build,
        )  # fmt: skip
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
                        "prompt_tokens": level.prompt_tokens,
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


def main(argv: list[str] | None = None) -> None:
    options = parse_args(argv)
    run = run_session_load if options.sessions else run_loadtest
    try:
        summary = asyncio.run(run(options))
    except httpx.HTTPError as error:
        sys.exit(f"resonance-loadtest: error: cannot reach {options.base_url}: {error}")
    except ValueError as error:
        sys.exit(f"resonance-loadtest: error: {error}")
    if options.sessions:
        print_sessions(summary)
    else:
        report.print_table(summary["levels"])
    if options.out is not None:
        plots = "" if options.sessions or not options.plots else ", *.png"
        print(f"report: {options.out}/summary.json, requests.json, requests.csv{plots}")


if __name__ == "__main__":
    main()
