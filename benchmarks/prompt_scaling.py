"""How the cost of one request grows with its prompt: time to first token and memory.

A tiny checkpoint trained (nominally) on 4096 positions, served by this server with
Resonance-YaRN x8 to 32K; one request at a time, prompts from 1K to the full context.

    python -m benchmarks.prompt_scaling [--lengths 1024,2048,...] [--requests 3]
"""

import argparse
import asyncio
import tempfile
from pathlib import Path

from checkpoints.tiny import build_tiny_checkpoint
from harness.client import Peak, comma_list, metric
from harness.servers import SERVER, free_port, serving
from loadtests.api import Options, run_loadtest

ORIGINAL, FACTOR, OUTPUT = 4096, 8, 16
KV_CACHE_GIB = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    served = ORIGINAL * FACTOR
    default = ",".join(str(n) for n in (1024, 2048, 4096, 8192, 16384, served - OUTPUT))
    parser.add_argument("--lengths", default=default)
    parser.add_argument("--requests", type=int, default=3)
    args = parser.parse_args()
    lengths = comma_list(args.lengths, int)

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = build_tiny_checkpoint(Path(tmp) / "model", max_position_embeddings=ORIGINAL)
        port = free_port()
        command = [
            *SERVER,
            "--port",
            str(port),
            "--model",
            str(checkpoint),
            "--served-model-name",
            "bench",
            "--dtype",
            "float32",
            "--enforce-eager",
            "--rope-type",
            "resonance_yarn",
            "--rope-factor",
            str(FACTOR),
            "--cpu-kv-cache-space-gib",
            str(KV_CACHE_GIB),
            "--max-num-seqs",
            "1",
        ]
        rows = []
        with serving(command, port, Path(tmp) / "server.log") as server:
            idle_rss = server.rss_bytes()
            for length in lengths:
                options = Options(
                    base_url=server.base_url,
                    model="bench",
                    prompt_tokens=[length],
                    output_tokens=OUTPUT,
                    concurrency=[1],
                    num_requests=args.requests,
                    warmup=1 if length == lengths[0] else 0,
                    out=None,
                )
                kv = lambda: metric(server.base_url, "resonance_kv_cache_usage_ratio")  # noqa: E731
                with Peak(server.rss_bytes, 0.1) as rss, Peak(kv, 0.1) as kv_use:
                    (level,) = asyncio.run(run_loadtest(options))["levels"]
                rows.append((length, level, {"rss": rss.peak, "kv": kv_use.peak}))
    print(
        f"\nprompt scaling: resonance_yarn x{FACTOR} from {ORIGINAL} to {served} tokens, "
        f"one request at a time, median of {args.requests}; server idle RSS "
        f"{idle_rss / 2**30:.2f} GiB (KV cache {KV_CACHE_GIB} GiB preallocated)"
    )
    print(
        f"{'prompt':>8s} {'TTFT p50 ms':>12s} {'ms / 1K tok':>12s} {'E2E p50 ms':>11s} "
        f"{'peak RSS GiB':>13s} {'peak KV use':>12s}"
    )
    for length, level, peak in rows:
        ttft = level["ttft_ms"]["p50"] or float("nan")
        print(
            f"{length:8d} {ttft:12.1f} {ttft / length * 1024:12.1f} "
            f"{level['e2e_ms']['p50'] or float('nan'):11.1f} {peak['rss'] / 2**30:13.2f} "
            f"{peak['kv']:12.3f}"
        )


if __name__ == "__main__":
    main()
