"""``resonance-loadtest``: sweep prompt lengths and load against an OpenAI-compatible server."""

import argparse
import asyncio
import sys
from pathlib import Path

import httpx

from loadtests import report
from loadtests.api import Options, run_loadtest, run_session_load
from loadtests.sessions import print_sessions


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
    parser.add_argument(
        "--mix",
        action="store_true",
        help="one level whose requests take the --prompt-tokens lengths in turn (a mixed "
        "workload), rather than a level per length",
    )
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
        mix=args.mix,
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
