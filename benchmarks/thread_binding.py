"""Where the CPU build's engine threads run: vLLM's ``auto`` binding against every core.

vLLM's ``auto`` binding (its default) on x86 reserves cores for its scheduler process (one per
rank), so on a 2-core machine the one model worker computes on one core. The other setting
binds its threads to every core this process may use (the server's default since this
measurement). Both are set explicitly as VLLM_CPU_OMP_THREADS_BIND. The demo, one server per
run, settings alternating (A B A B A B): each run sends ``--prompts`` prompts of ``--tokens``
tokens (fresh ones, so nothing is cached) with one output token, one at a time, after one
warm-up request.

    python -m benchmarks.thread_binding [--tokens 2000] [--runs 3] [--prompts 2]
"""

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from harness.servers import SERVER, free_port, serving
from server.plan import THREADS_BIND

MODEL = "smollm2-135m-instruct"


def prefill_seconds(base_url: str, tokens: int, salt: int) -> float:
    prompt = [1000 + (salt * 7919 + i * 104729) % 40000 for i in range(tokens)]
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 1, "temperature": 0}
    started = time.perf_counter()
    response = httpx.post(f"{base_url}/v1/completions", json=body, timeout=900)
    response.raise_for_status()
    return time.perf_counter() - started


def run(binding: str, args, salt: int, log: Path) -> list[float]:
    port = free_port()
    command = [
        *SERVER,
        "--port",
        str(port),
        "--enforce-eager",
        "--max-model-len",
        "4096",
        "--no-enable-prefix-caching",
    ]
    with serving(command, port, log, env={THREADS_BIND: binding}, timeout=900) as server:
        prefill_seconds(server.base_url, args.tokens, salt)  # warm-up
        return [
            prefill_seconds(server.base_url, args.tokens, salt + 1 + i) for i in range(args.prompts)
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=2)
    args = parser.parse_args()
    every_core = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    settings = {"vLLM's auto": "auto", f"every core ({every_core})": every_core}
    seconds: dict[str, list[float]] = {name: [] for name in settings}
    with tempfile.TemporaryDirectory() as tmp:
        for run_index in range(args.runs):
            for name, binding in settings.items():
                log = Path(tmp) / f"{run_index}-{len(seconds[name])}.log"
                measured = run(binding, args, 100 * run_index + 10 * len(seconds[name]), log)
                seconds[name] += measured
                print(
                    f"run {run_index + 1} {name}: " + ", ".join(f"{s:.2f} s" for s in measured),
                    flush=True,
                )
    print(f"\n{args.tokens}-token prefill, {args.runs} alternating runs x {args.prompts} prompts")
    print("| binding | median s | min s | max s | tokens/s (median) |")
    print("|---|---|---|---|---|")
    medians = {}
    for name, values in seconds.items():
        medians[name] = statistics.median(values)
        print(
            f"| {name} | {medians[name]:.2f} | {min(values):.2f} | {max(values):.2f} | "
            f"{args.tokens / medians[name]:.0f} |"
        )
    default, every = medians.values()
    print(f"\nevery core / default, median time: {every / default:.2f}")


if __name__ == "__main__":
    main()
