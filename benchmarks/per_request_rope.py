"""Per-request RoPE scaling on the demo, side by side with the unscaled model and static
Resonance-YaRN x4: perplexity of whole documents and passkey through the API (resonance-eval).

Each configuration is its own server start on the same weights (SmolLM2-135M-Instruct, trained
on 8192 positions). A request's table depends on its own length under per-request, so a 12K
document is scaled at every position there, exactly as under static. Results go to --out, one
folder per configuration; a configuration already there is kept (delete its folder to re-run
it), so the grid can be run in parts.

    python -m benchmarks.per_request_rope [--configs unscaled,static,per-request] [--out DIR]

``--throughput`` instead runs the serving cost, static against per-request, in alternating
rounds (each its own server start): a mixed workload (resonance-loadtest ``--mix``: prompts of
2000 and 12000 tokens in turn, 2 clients, 32 output tokens each), then long-document sessions
of a short (3000-token) and a long (10000-token) document, whose later turns the prefix cache
serves; the prefix-cache hit rate of each table is read from the server's /metrics.

    python -m benchmarks.per_request_rope --throughput [--rounds 2] [--out DIR]
"""

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.long_context_quality import resonance_eval
from harness.client import comma_list
from harness.servers import SERVER, free_port, serving
from loadtests.api import Options, run_loadtest, run_session_load

MODEL = "smollm2-135m-instruct"
TRAINED = 8192
FLAGS = {
    "unscaled": ["--rope-type", "none"],
    "static": ["--rope-type", "resonance_yarn", "--rope-factor", "4", "--rope-policy", "static"],
    "per-request": [
        *("--rope-type", "resonance_yarn", "--rope-factor", "4"),
        *("--rope-policy", "per-request"),
    ],
}
ENGINE = [
    *("--enforce-eager", "--cpu-kv-cache-space-gib", "4", "--max-num-seqs", "2"),
    *("--request-timeout", "3600"),
]
# Whole documents (the first N tokens of one text); 8184 + the one generated token fits 8192.
DOCUMENT_LENGTHS = "1024,2048,4096,8184,12288,16384"
PASSKEY_LENGTHS = "1000,2000,4000,8000,12000"


def run_config(name: str, cache: Path, args: argparse.Namespace) -> None:
    directory = args.out / name
    if (directory / "passkey" / "summary.json").exists():
        print(f"{name}: kept from an earlier run ({directory})", flush=True)
        return
    served = TRAINED if name == "unscaled" else 4 * TRAINED
    port = free_port()
    command = [*SERVER, "--port", str(port), "--cache-dir", str(cache), *FLAGS[name], *ENGINE]
    directory.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with serving(command, port, directory / "server.log", timeout=900) as server:
        startup = round(time.monotonic() - started, 1)
        common = [
            *("--base-url", server.base_url, "--model", MODEL, "--label", name),
            *("--trained-context", str(TRAINED)),
        ]
        lengths = [n for n in comma_list(args.lengths, int) if n < served]
        keys = [n for n in comma_list(args.passkey_lengths, int) if n + 16 < served]
        resonance_eval(
            [
                *("perplexity", *common, "--documents", "1", "--bucket", "1024"),
                *("--lengths", ",".join(map(str, lengths)), "--out", str(directory / "perplexity")),
            ]
        )
        resonance_eval(
            [
                *("passkey", *common, "--depths", "0.5", "--samples", "1", "--candidates", "1"),
                *("--lengths", ",".join(map(str, keys)), "--out", str(directory / "passkey")),
            ]
        )
    (directory / "run.json").write_text(json.dumps({"startup_s": startup}))


def markdown(out: Path, names: list[str]) -> str:
    """The tables for docs/RESULTS.md from the configurations' summaries."""
    runs = {n: out / n for n in names if (out / n / "passkey" / "summary.json").exists()}
    perplexity = {
        n: json.loads((d / "perplexity" / "summary.json").read_text()) for n, d in runs.items()
    }
    passkey = {n: json.loads((d / "passkey" / "summary.json").read_text()) for n, d in runs.items()}
    lengths = sorted({int(k) for s in perplexity.values() for k in s["lengths"]})
    lines = [
        "| document tokens | " + " | ".join(runs) + " |",
        "|---|" + "---|" * len(runs),
    ]
    for length in lengths:
        cells = []
        for name in runs:
            value = (perplexity[name]["lengths"].get(str(length)) or {}).get("perplexity")
            cells.append("-" if value is None else f"{value:.3f}")
        lines.append(f"| {length} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| passkey prompt tokens | " + " | ".join(f"{n}: match, log p(key)" for n in runs) + " |",
        "|---|" + "---|" * len(runs),
    ]
    keys = sorted({c["length"] for s in passkey.values() for c in s["cells"]})
    for length in keys:
        cells = []
        for name in runs:
            cell = next((c for c in passkey[name]["cells"] if c["length"] == length), None)
            if cell is None or cell["accuracy"] is None:
                cells.append("-")
            else:
                hit = "yes" if cell["accuracy"] == 1 else "no"
                cells.append(f"{hit}, {cell['mean_key_logprob']:.2f}")
        lines.append(f"| {length} | " + " | ".join(cells) + " |")
    tables = {n: perplexity[n].get("rope_tables") for n in runs}
    lines += ["", "Tables that served the requests: " + json.dumps(tables)]
    return "\n".join(lines)


MIX, MIX_CLIENTS, MIX_REQUESTS, OUTPUT_TOKENS = [2000, 12000], 2, 8, 32
SESSION_DOCUMENTS = {"short": 3000, "long": 10000}


def table_counters(base_url: str) -> dict[str, dict[str, float]]:
    """Per RoPE table: engine requests, prompt tokens and those served from the cache."""
    names = {
        "resonance_engine_requests_total": "requests",
        "resonance_table_prompt_tokens_total": "prompt_tokens",
        "resonance_table_prompt_tokens_cached_total": "cached_tokens",
    }
    counters: dict[str, dict[str, float]] = {}
    for line in httpx.get(f"{base_url}/metrics", timeout=30).text.splitlines():
        name, _, rest = line.partition("{")
        if name in names and rest.startswith('table="'):
            table = rest.split('"')[1]
            counters.setdefault(table, {})[names[name]] = float(line.split()[-1])
    return counters


def throughput_round(name: str, number: int, cache: Path, args: argparse.Namespace) -> dict:
    directory = args.out / "throughput" / f"{number}-{name}"
    port = free_port()
    command = [*SERVER, "--port", str(port), "--cache-dir", str(cache), *FLAGS[name], *ENGINE]
    directory.mkdir(parents=True, exist_ok=True)
    with serving(command, port, directory / "server.log", timeout=900) as server:
        mixed = Options(
            base_url=server.base_url,
            model=MODEL,
            prompt_tokens=MIX,
            mix=True,
            concurrency=[MIX_CLIENTS],
            num_requests=MIX_REQUESTS,
            output_tokens=OUTPUT_TOKENS,
            warmup=1,
            timeout_s=3600,
            out=directory / "mixed",
            plots=False,
        )
        (level,) = asyncio.run(run_loadtest(mixed))["levels"]
        before = table_counters(server.base_url)
        for user, (label, tokens) in enumerate(SESSION_DOCUMENTS.items()):
            sessions = Options(
                base_url=server.base_url,
                model=MODEL,
                prompt_tokens=[tokens],
                sessions=1,
                turns=3,
                document_tokens=tokens,
                output_tokens=OUTPUT_TOKENS,
                first_document=1000 * number + user,
                out=directory / f"sessions-{label}",
            )
            asyncio.run(run_session_load(sessions))
        after = table_counters(server.base_url)
    cache_rates = {}
    for table, values in after.items():
        old = before.get(table, {})
        prompt = values.get("prompt_tokens", 0) - old.get("prompt_tokens", 0)
        cached = values.get("cached_tokens", 0) - old.get("cached_tokens", 0)
        cache_rates[table] = {"prompt_tokens": prompt, "cached_tokens": cached}
    result = {
        "config": name,
        "round": number,
        "request_throughput": level["request_throughput"],
        "output_token_throughput": level["output_token_throughput"],
        "ttft_p50_ms": level["ttft_ms"]["p50"],
        "e2e_p50_ms": level["e2e_ms"]["p50"],
        "mixed_tables": level.get("rope_tables"),
        "session_cache_by_table": cache_rates,
    }
    (directory / "result.json").write_text(json.dumps(result, indent=2))
    return result


def throughput(args: argparse.Namespace) -> None:
    results = []
    with tempfile.TemporaryDirectory() as cache:
        for number in range(args.rounds):
            order = ["static", "per-request"] if number % 2 == 0 else ["per-request", "static"]
            for name in order:
                results.append(throughput_round(name, number, Path(cache), args))
                print(json.dumps(results[-1]), flush=True)
    (args.out / "throughput.json").write_text(json.dumps(results, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(FLAGS))
    parser.add_argument("--lengths", default=DOCUMENT_LENGTHS)
    parser.add_argument("--passkey-lengths", default=PASSKEY_LENGTHS)
    parser.add_argument("--out", type=Path, default=Path("results/per-request-rope"))
    parser.add_argument("--throughput", action="store_true", help="the serving cost instead")
    parser.add_argument("--rounds", type=int, default=2, help="--throughput rounds")
    args = parser.parse_args()
    if args.throughput:
        args.out.mkdir(parents=True, exist_ok=True)
        throughput(args)
        return
    names = comma_list(args.configs)
    unknown = [n for n in names if n not in FLAGS]
    if unknown:
        parser.error(f"unknown configurations {unknown}; known: {', '.join(FLAGS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as cache:
        for name in names:
            run_config(name, Path(cache), args)
    tables = markdown(args.out, list(FLAGS))
    (args.out / "tables.md").write_text(tables + "\n")
    print(tables)


if __name__ == "__main__":
    main()
