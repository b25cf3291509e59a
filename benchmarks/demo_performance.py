"""The demo model served as users get it: start-up, time to first token by prompt length,
decode speed with 1 and 8 clients, and peak memory.

    python -m benchmarks.demo_performance [--lengths 1024,4096,...] [--requests 2]
"""

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import httpx

from harness.client import Peak, comma_list
from harness.servers import SERVER, free_port, serving
from loadtests.api import Options, run_loadtest

MODEL, SERVED = "smollm2-135m-instruct", 32768


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default=f"1024,4096,8192,16384,{SERVED - 16}")
    parser.add_argument("--requests", type=int, default=2)
    parser.add_argument("--kv-cache-gib", type=int, default=4)
    args = parser.parse_args()
    lengths = comma_list(args.lengths, int)
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        command = [
            *SERVER,
            "--port",
            str(port),
            "--cache-dir",
            tmp,
            "--cpu-kv-cache-space-gib",
            str(args.kv_cache_gib),
        ]
        # A first start converts the GGUF file; the second is what a user sees every time.
        with serving(command, port, Path(tmp) / "first.log", timeout=900) as first:
            chat = httpx.post(
                f"{first.base_url}/v1/chat/completions",
                timeout=300,
                json={
                    "model": MODEL,
                    "temperature": 0,
                    "max_tokens": 32,
                    "messages": [{"role": "user", "content": "What is the capital of France?"}],
                },
            ).json()["choices"][0]["message"]["content"]
        started = time.monotonic()
        with serving(command, port, Path(tmp) / "server.log", timeout=900) as server:
            startup = time.monotonic() - started
            idle = server.rss_bytes()

            def level(prompt: int, output: int, clients: int, requests: int) -> dict:
                options = Options(
                    base_url=server.base_url,
                    model=MODEL,
                    prompt_tokens=[prompt],
                    output_tokens=output,
                    concurrency=[clients],
                    num_requests=requests,
                    warmup=0,
                    out=None,
                )
                return asyncio.run(run_loadtest(options))["levels"][0]

            with Peak(server.rss_bytes) as peak:
                ttft = [(n, level(n, 16, 1, args.requests)) for n in lengths]
                decode = [(c, level(256, 128, c, 2 * c)) for c in (1, 8)]
    memory = f"idle RSS {idle / 2**30:.2f} GiB, peak {peak.peak / 2**30:.2f} GiB"
    print(
        f"\ndemo ({MODEL}, resonance_yarn x4 to {SERVED}): start-up {startup:.0f} s "
        f"(GGUF already converted); {memory} (server + engine, KV cache "
        f"{args.kv_cache_gib} GiB)"
    )
    print(f"greedy answer to 'What is the capital of France?': {chat!r}")
    print("| prompt tokens | TTFT p50 (ms) | E2E p50 (ms) |\n|---|---|---|")
    for n, row in ttft:
        print(f"| {n} | {row['ttft_ms']['p50']:.0f} | {row['e2e_ms']['p50']:.0f} |")
    print("\n| clients | output tokens/s | TPOT p50 (ms) |\n|---|---|---|")
    for clients, row in decode:
        print(f"| {clients} | {row['output_token_throughput']:.1f} | {row['tpot_ms']['p50']:.1f} |")


if __name__ == "__main__":
    main()
