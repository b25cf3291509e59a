"""``resonance-eval``: does a server's long context work? Perplexity by position, and passkey.

resonance-eval perplexity --base-url URL --model NAME --lengths 4096,8192 --out DIR
resonance-eval passkey --base-url URL --model NAME --lengths 4096,8192 --out DIR
resonance-eval plot DIR1 DIR2 ... --out FILE.png
"""

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from evals import passkey, perplexity, report
from evals.client import Client, EvalError
from evals.documents import builtin_source, user_documents


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def _floats(text: str) -> list[float]:
    values = [float(part) for part in text.split(",") if part]
    if any(not 0 <= v <= 1 for v in values):
        raise argparse.ArgumentTypeError("depths are fractions between 0 and 1")
    return values


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="resonance-eval", description=__doc__.splitlines()[0])
    commands = root.add_subparsers(dest="command", required=True)
    for name, helptext in (
        ("perplexity", "NLL by token position from prompt log-probabilities"),
        ("passkey", "a key hidden at a depth in filler text"),
    ):
        add = commands.add_parser(name, help=helptext).add_argument
        add("--base-url", required=True, help="the server, e.g. http://host:8000")
        add("--model", required=True, help="the served model's name")
        add("--api-key", default=None)
        add("--lengths", type=_ints, required=True, help="prompt tokens, e.g. 4096,8192")
        add("--out", type=Path, required=True, help="directory for the report")
        add("--label", default=None, help="this run's name in plots (default: the model)")
        add("--tokenizer", default=None, help="a local tokenizer, for servers without /tokenize")
        add("--concurrency", type=int, default=1)
        add("--trained-context", type=int, default=None, help="marked on the plots")
        if name == "perplexity":
            add("--documents", type=int, default=3)
            add("--bucket", type=int, default=1024, help="tokens per position bucket")
            add("--text-file", type=Path, action="append", default=[])
            add("--jsonl", type=Path, default=None, help='lines of {"text": ...}')
        else:
            add("--depths", type=_floats, default=[0, 0.25, 0.5, 0.75, 1])
            add("--samples", type=int, default=2, help="keys per length and depth")
            add("--candidates", type=int, default=4, help="random keys to rank the true one among")
            add("--endpoint", choices=("completions", "chat"), default="completions")
            add("--seed", type=int, default=0)
    plot = commands.add_parser("plot", help="overlay runs of one evaluation")
    plot.add_argument("runs", type=Path, nargs="+")
    plot.add_argument("--out", type=Path, required=True)
    return root


async def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    client = Client(args.base_url, args.model, args.api_key, args.tokenizer)
    started = time.time()
    summary: dict[str, Any] = {
        "evaluation": args.command,
        "label": args.label or args.model,
        "base_url": args.base_url,
        "model": args.model,
        "trained_context": args.trained_context,
        "lengths_asked": args.lengths,
        "errors": [],
    }
    records: list[dict[str, Any]] = []
    try:
        info = await client.info()
        summary["max_model_len"] = info.max_model_len
        summary["rope_policy"] = info.rope_policy
        too_long = [n for n in args.lengths if info.max_model_len and n >= info.max_model_len]
        if too_long:
            raise EvalError(
                f"lengths {too_long} do not fit the server's context of {info.max_model_len} "
                "tokens (a prompt of L tokens needs L + 1: one token is generated)"
            )
        if args.command == "perplexity":
            records = await _perplexity(client, args, summary)
        else:
            samples = await passkey.run(
                client,
                args.lengths,
                args.depths,
                args.samples,
                args.candidates,
                args.endpoint,
                args.seed,
                args.concurrency,
            )
            summary.update(passkey.summarize(samples))
            summary["endpoint"] = args.endpoint
            records = [s.record() for s in samples]
    except EvalError as error:
        summary["errors"].append(str(error))
        summary.setdefault("lengths", {})
        summary.setdefault("buckets", {})
        summary.setdefault("cells", [])
    finally:
        await client.close()
    summary["rope_tables"] = dict(client.tables)  # answers by the RoPE table that served them
    summary["errors"] += [r["error"] for r in records if r.get("error")]
    summary["seconds"] = round(time.time() - started, 1)
    return {"summary": summary, "records": records}


async def _perplexity(client: Client, args, summary: dict[str, Any]) -> list[dict[str, Any]]:
    if args.text_file or args.jsonl:
        documents = [
            await perplexity.tokenize_document(client, d)
            for d in user_documents(args.text_file, args.jsonl)
        ]
        summary["source"] = "user documents"
    else:
        documents = await perplexity.builtin_documents(client, args.documents, max(args.lengths))
        summary["source"] = builtin_source()[0]
    summary["documents"] = [
        {"name": d.document.name, "sha256": d.document.sha256, "tokens": len(d.ids)}
        for d in documents
    ]
    samples = await perplexity.run(client, documents, args.lengths, args.concurrency)
    summary.update(perplexity.summarize(samples, args.bucket))
    return [s.record() for s in samples]


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.command == "plot":
        try:
            report.plot_runs(args.runs, args.out)
        except (OSError, ValueError, KeyError) as error:
            sys.exit(f"resonance-eval: error: {error}")
        print(args.out)
        return
    result = asyncio.run(evaluate(args))
    summary = result["summary"]
    report.write(args.out, summary, result["records"])
    report.print_table(summary)
    print(f"report: {args.out}")
    if summary["errors"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
