"""Short requests beside a long prefill, with and without --long-prefill-token-threshold.

The demo, one server per setting: a --long-tokens prompt is sent (one output token) and, while
its prefill runs, a short request (--short-tokens prompt, 16 output tokens) every
--interval seconds; the short requests' time to first token is what one long document costs
everybody else. vLLM chunks long prefills (--max-num-batched-tokens per step); the threshold
caps how much of a step one long prefill may take.

    python -m benchmarks.long_prefill [--long-tokens 4096] [--threshold 512] [--rounds 2]
"""

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from harness.servers import SERVER, free_port, serving
from loadtests.prompts import PromptBuilder

MODEL = "smollm2-135m-instruct"


async def ttft(client: httpx.AsyncClient, prompt: str, max_tokens: int) -> float:
    body = {
        "model": MODEL,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "stream": True,
        "temperature": 0,
        "ignore_eos": True,
    }
    started = time.perf_counter()
    async with client.stream("POST", "/v1/completions", json=body) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: {") and '"text": ""' not in line:
                return time.perf_counter() - started
    raise RuntimeError("no output")


async def one_round(base_url: str, builder: PromptBuilder, args, index: int) -> dict:
    async with httpx.AsyncClient(base_url=base_url, timeout=900) as client:
        long_prompt = await asyncio.to_thread(builder.build, args.long_tokens, index * 1000)
        shorts = [
            await asyncio.to_thread(builder.build, args.short_tokens, index * 1000 + 1 + i)
            for i in range(args.max_short)
        ]
        long_task = asyncio.create_task(ttft(client, long_prompt, 1))
        short_tasks = []
        for prompt in shorts:
            if long_task.done():
                break
            short_tasks.append(asyncio.create_task(ttft(client, prompt, 16)))
            await asyncio.sleep(args.interval)
        return {"long_s": await long_task, "short_s": await asyncio.gather(*short_tasks)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--long-tokens", type=int, default=4096)
    parser.add_argument("--short-tokens", type=int, default=64)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--max-short", type=int, default=60)
    parser.add_argument("--threshold", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    variants = {
        "default": [],
        f"--long-prefill-token-threshold {args.threshold}": [
            "--long-prefill-token-threshold",
            str(args.threshold),
        ],
    }
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, flags in variants.items():
            port = free_port()
            command = [
                *SERVER,
                "--port",
                str(port),
                "--cache-dir",
                tmp,
                "--enforce-eager",
                "--cpu-kv-cache-space-gib",
                "2",
                "--max-num-seqs",
                "8",
                *flags,
            ]
            log = Path(tmp) / f"{len(results)}.log"
            with (
                serving(command, port, log, timeout=900) as server,
                httpx.Client(base_url=server.base_url, timeout=60) as sync,
            ):
                builder = PromptBuilder.from_server(sync, MODEL)
                rounds = [
                    asyncio.run(one_round(server.base_url, builder, args, i))
                    for i in range(args.rounds)
                ]
            results[label] = rounds
    print(
        f"\n{MODEL}: one {args.long_tokens}-token prefill, a {args.short_tokens}-token request "
        f"every {args.interval} s meanwhile; {args.rounds} rounds per setting\n"
    )
    print("| setting | short requests | short TTFT p50 ms | short TTFT p99 ms | long TTFT s |")
    print("|---|---|---|---|---|")
    for label, rounds in results.items():
        shorts = np.array([s for r in rounds for s in r["short_s"]]) * 1000
        long_s = statistics.median(r["long_s"] for r in rounds)
        p50, p99 = np.percentile(shorts, [50, 99])
        print(f"| {label} | {len(shorts)} | {p50:.0f} | {p99:.0f} | {long_s:.1f} |")


if __name__ == "__main__":
    main()
