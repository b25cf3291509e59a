"""What the front end costs: the engine alone, this server (and an older checkout of it) and
vLLM's own server, under the same streamed load, alternating, in one run.

The engine alone is vLLM's ``AsyncLLM`` driven in its own process with the same requests;
the servers are driven over HTTP by one async client. Same tiny checkpoint (plain RoPE, 2304
positions), same engine settings, every core for the engine threads of each:

    python -m benchmarks.seam_overhead [--before DIR] [--rounds 2] [--requests 48] \\
        [--concurrency 8] [--prompt-tokens 2000] [--output-tokens 16]

``--before DIR``: a checkout of an older version (``git worktree add DIR COMMIT``), whose
``python -m server`` runs from DIR with this environment's packages.
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from checkpoints.tiny import build_tiny_checkpoint
from harness.servers import free_port, serving

ENGINE_FLAGS = ["--dtype", "float32", "--enforce-eager"]
NAME = "bench"


def all_cores() -> str:
    return ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))


def environment() -> dict[str, str]:
    return {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_CPU_OMP_THREADS_BIND": all_cores()}


def prompts(count: int, length: int) -> list[list[int]]:
    """Distinct prompts (no prefix-cache hits between them) of the tiny vocabulary."""
    return [[3 + (i * 131 + 7 * j) % 1990 for j in range(length)] for i in range(count)]


@dataclass
class Load:
    requests: int
    concurrency: int
    prompt_tokens: int
    output_tokens: int


async def drive_http(base_url: str, load: Load) -> float:
    """Requests per second of the streamed load against an OpenAI-compatible server."""
    limit = asyncio.Semaphore(load.concurrency)
    body = {"model": NAME, "max_tokens": load.output_tokens, "ignore_eos": True, "stream": True}

    async def one(client: httpx.AsyncClient, ids: list[int]) -> None:
        async with limit:
            request = client.stream("POST", "/v1/completions", json={**body, "prompt": ids})
            async with request as response:
                response.raise_for_status()
                async for _ in response.aiter_lines():
                    pass

    async with httpx.AsyncClient(base_url=base_url, timeout=600) as client:
        await one(client, prompts(1, load.prompt_tokens)[0])  # warm-up
        started = time.perf_counter()
        await asyncio.gather(*(one(client, p) for p in prompts(load.requests, load.prompt_tokens)))
        return load.requests / (time.perf_counter() - started)


async def drive_engine(checkpoint: str, load: Load) -> float:
    """The same load on vLLM's AsyncLLM in this process."""
    from vllm import AsyncEngineArgs, SamplingParams
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM

    args = AsyncEngineArgs(
        model=checkpoint, dtype="float32", enforce_eager=True, served_model_name=NAME
    )
    llm = AsyncLLM.from_engine_args(args)
    params = SamplingParams(
        max_tokens=load.output_tokens, ignore_eos=True, output_kind=RequestOutputKind.DELTA
    )
    limit = asyncio.Semaphore(load.concurrency)

    async def one(index: int, ids: list[int]) -> None:
        async with limit:
            async for _ in llm.generate({"prompt_token_ids": ids}, params, f"r{index}"):
                pass

    try:
        await one(-1, prompts(1, load.prompt_tokens)[0])
        started = time.perf_counter()
        await asyncio.gather(
            *(one(i, p) for i, p in enumerate(prompts(load.requests, load.prompt_tokens)))
        )
        return load.requests / (time.perf_counter() - started)
    finally:
        llm.shutdown()


def engine_alone(checkpoint: Path, load: Load) -> float:
    """`drive_engine` in a process of its own (as a server's engine would be)."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.seam_overhead",
        "--engine-worker",
        str(checkpoint),
        json.dumps(load.__dict__),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, **environment()}, check=True
    )
    return float(result.stdout.strip().splitlines()[-1])


def server(command: list[str], load: Load, log: Path, cwd: Path | None = None) -> float:
    port = free_port()
    with serving([*command, "--port", str(port)], port, log, env=environment(), cwd=cwd) as running:
        return asyncio.run(drive_http(running.base_url, load))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=2000)
    parser.add_argument("--output-tokens", type=int, default=16)
    parser.add_argument("--engine-worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine_worker:
        checkpoint, load = args.engine_worker
        print(asyncio.run(drive_engine(checkpoint, Load(**json.loads(load)))))
        return
    load = Load(args.requests, args.concurrency, args.prompt_tokens, args.output_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        checkpoint = build_tiny_checkpoint(root / "tiny", max_position_embeddings=2304)
        ours = [
            sys.executable,
            "-m",
            "server",
            "--model",
            str(checkpoint),
            "--served-model-name",
            NAME,
            *ENGINE_FLAGS,
        ]
        vllm = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(checkpoint),
            "--served-model-name",
            NAME,
            *ENGINE_FLAGS,
        ]
        variants = {
            "engine alone (AsyncLLM)": lambda log: engine_alone(checkpoint, load),
            "resonance-serve": lambda log: server(ours, load, log),
            "vLLM api_server": lambda log: server(vllm, load, log),
        }
        if args.before:
            variants["resonance-serve (before)"] = lambda log: server(
                ours, load, log, cwd=args.before.resolve()
            )
        runs: dict[str, list[float]] = {label: [] for label in variants}
        for round_ in range(args.rounds):
            order = list(variants) if round_ % 2 == 0 else list(reversed(variants))
            for label in order:
                log = root / f"{label.split()[0]}-{round_}.log"
                rate = variants[label](log)
                runs[label].append(rate)
                print(f"round {round_ + 1}: {label}: {rate:.2f} requests/s", flush=True)
    print(
        f"\n{load.requests} x {load.prompt_tokens}-token prompts, {load.output_tokens} output "
        f"tokens, {load.concurrency} at a time, streamed; requests/s over {args.rounds} rounds"
    )
    for label, rates in runs.items():
        median = statistics.median(rates)
        print(f"{label:28s} {min(rates):6.2f} - {max(rates):6.2f} (median {median:.2f})")


if __name__ == "__main__":
    main()
