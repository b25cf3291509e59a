"""What a JSON schema costs: decode speed with and without one, and the time to compile one.

The demo model, one server, requests alternated (free text, schema, free text, ...) so that
both sides see the same machine. Every request streams; decode speed is (output tokens - 1) /
(end - first token), per request, reported as the median. Compile time is the first request
of a schema never seen before (the front end's check and the engine's compilation) against
the same schema sent again (both compiled and cached by then).

    python -m benchmarks.structured_outputs [--requests 6] [--max-tokens 96]
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from harness.servers import SERVER, free_port, serving

MODEL = "smollm2-135m-instruct"
QUESTION = "Describe the city of Paris: its name, country, population and three landmarks."
SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "country": {"type": "string"},
        "population": {"type": "integer"},
        "landmarks": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
    },
    "required": ["name", "country", "population", "landmarks"],
}


def stream(base_url: str, body: dict) -> dict:
    """Time to the first token and decode speed of one streamed chat request."""
    started = time.monotonic()
    first = end = None
    tokens = 0
    with httpx.stream("POST", f"{base_url}/v1/chat/completions", json=body, timeout=600) as r:
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = first or time.monotonic()
                end = time.monotonic()
    decode = (tokens - 1) / (end - first) if tokens > 1 and end > first else float("nan")
    return {"ttft_s": first - started, "tokens": tokens, "decode_tps": decode}


def request(schema: dict | None, max_tokens: int) -> dict:
    body = {
        "model": MODEL,
        "temperature": 0,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": QUESTION}],
    }
    if schema is not None:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "city", "schema": schema},
        }
    return body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=6, help="of each kind")
    parser.add_argument("--max-tokens", type=int, default=96)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        command = [
            *SERVER,
            "--port",
            str(port),
            "--cache-dir",
            tmp,
            "--cpu-kv-cache-space-gib",
            "2",
            "--max-num-seqs",
            "4",
        ]
        with serving(command, port, Path(tmp) / "server.log", timeout=900) as server:
            url = server.base_url
            stream(url, request(None, 8))  # warm-up
            compile_runs = []
            for i in range(3):  # a schema the server has never seen, then the same again
                fresh = {**SCHEMA, "title": f"City{i}"}
                first = stream(url, request(fresh, 8))["ttft_s"]
                again = stream(url, request(fresh, 8))["ttft_s"]
                compile_runs.append((first, again))
            runs = {"free text": [], "JSON schema": []}
            for _ in range(args.requests):
                runs["free text"].append(stream(url, request(None, args.max_tokens)))
                runs["JSON schema"].append(stream(url, request(SCHEMA, args.max_tokens)))
    print(
        f"\n{MODEL}, {args.requests} streamed requests of each kind, alternated, "
        f"max_tokens {args.max_tokens}, temperature 0\n"
    )
    print("| output | decode tokens/s (median) | TTFT ms (median) | output tokens (mean) |")
    print("|---|---|---|---|")
    for name, rows in runs.items():
        decode = statistics.median(r["decode_tps"] for r in rows)
        ttft = statistics.median(r["ttft_s"] for r in rows) * 1000
        tokens = statistics.mean(r["tokens"] for r in rows)
        print(f"| {name} | {decode:.1f} | {ttft:.0f} | {tokens:.0f} |")
    print("\n| new schema: TTFT ms | same schema again: TTFT ms | difference (compilation) |")
    print("|---|---|---|")
    for first, again in compile_runs:
        print(f"| {first * 1000:.0f} | {again * 1000:.0f} | {(first - again) * 1000:.0f} |")


if __name__ == "__main__":
    main()
