"""Servers side by side under the same load, in one run, alternating (A B B A ...).

Presets:
  vs-vllm        this server against vLLM's own OpenAI server (python -m
                 vllm.entrypoints.openai.api_server), same checkpoint and engine settings;
                 the goal is at least 1.0x throughput and no higher p50 latency.
  rope-variants  this server with resonance_yarn, yarn (factor 4) and the unscaled model,
                 at prompt lengths all three can serve: the paper's claim is no overhead.

    python -m benchmarks.compare_servers --preset vs-vllm [--rounds 2] [--out results/vs-vllm]
"""

import argparse
import asyncio
import json
import math
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from checkpoints.tiny import build_tiny_checkpoint
from harness.client import comma_list
from harness.servers import SERVER, free_port, serving
from loadtests.api import Options, run_loadtest

ENV = {"VLLM_CPU_KVCACHE_SPACE": "2"}
ENGINE_FLAGS = ["--dtype", "float32", "--enforce-eager"]
NAME = "bench"


@dataclass
class Variant:
    label: str
    command: list[str]  # without --port
    max_prompt: int  # longest prompt it can take with the output


def presets(checkpoint: Path, plain: Path, output_tokens: int) -> dict[str, list[Variant]]:
    ours = [*SERVER, "--served-model-name", NAME, *ENGINE_FLAGS]
    vllm = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--served-model-name",
        NAME,
        *ENGINE_FLAGS,
    ]
    served = 1024 - output_tokens
    scaled = ["--model", str(plain), "--rope-factor", "4"]
    return {
        "vs-vllm": [
            Variant("resonance-serve", [*ours, "--model", str(checkpoint)], served),
            Variant("vllm api_server", [*vllm, "--model", str(checkpoint)], served),
        ],
        "rope-variants": [
            Variant("resonance_yarn", [*ours, *scaled, "--rope-type", "resonance_yarn"], served),
            Variant("yarn", [*ours, *scaled, "--rope-type", "yarn"], served),
            Variant("unscaled", [*ours, "--model", str(plain)], 256 - output_tokens),
        ],
    }


def run_variant(variant: Variant, options: Options, log: Path) -> list[dict]:
    port = free_port()
    prompt_tokens = [p for p in options.prompt_tokens if p <= variant.max_prompt]
    with serving([*variant.command, "--port", str(port)], port, log, env=ENV) as server:
        run = Options(
            **{**options.__dict__, "base_url": server.base_url, "prompt_tokens": prompt_tokens}
        )
        return asyncio.run(run_loadtest(run))["levels"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("vs-vllm", "rope-variants"), default="vs-vllm")
    parser.add_argument("--prompt-tokens", default="128,192,768")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--num-requests", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        params = {
            "rope_type": "resonance_yarn",
            "rope_theta": 10000.0,
            "factor": 4.0,
            "original_max_position_embeddings": 256,
        }
        checkpoint = build_tiny_checkpoint(root / "resonance", params, 1024)
        plain = build_tiny_checkpoint(root / "plain")
        variants = presets(checkpoint, plain, args.output_tokens)[args.preset]
        options = Options(
            base_url="",
            model=NAME,
            prompt_tokens=comma_list(args.prompt_tokens, int),
            concurrency=comma_list(args.concurrency, int),
            output_tokens=args.output_tokens,
            num_requests=args.num_requests,
            warmup=4,
            out=None,
        )
        runs: dict[str, list[list[dict]]] = {v.label: [] for v in variants}
        for round_ in range(args.rounds):
            order = variants if round_ % 2 == 0 else list(reversed(variants))
            for variant in order:
                print(f"round {round_ + 1}: {variant.label}", file=sys.stderr, flush=True)
                log = root / f"{variant.label.replace(' ', '_')}-{round_}.log"
                runs[variant.label].append(run_variant(variant, options, log))
    table = medians(runs)
    print_comparison(table, [v.label for v in variants], args)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "comparison.json").write_text(json.dumps({"runs": runs, "medians": table}))


def medians(runs: dict[str, list[list[dict]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per variant and level: the median over rounds of throughput and TTFT/E2E p50."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for label, rounds in runs.items():
        per_level: dict[str, list[dict]] = {}
        for levels in rounds:
            for level in levels:
                key = f"c={level['load_value']:g} p={level['prompt_tokens']}"
                per_level.setdefault(key, []).append(level)
        table[label] = {
            key: {
                "tokens_per_s": statistics.median(lv["output_token_throughput"] for lv in lvs),
                "ttft_p50_ms": statistics.median(lv["ttft_ms"]["p50"] for lv in lvs),
                "e2e_p50_ms": statistics.median(lv["e2e_ms"]["p50"] for lv in lvs),
                "failed": sum(lv["failed"] for lv in lvs),
            }
            for key, lvs in per_level.items()
        }
    return table


def print_comparison(table, labels: list[str], args) -> None:
    reference = labels[-1] if args.preset == "vs-vllm" else labels[1]
    print(
        f"\n{args.preset}: median of {args.rounds} alternating rounds, {args.num_requests} "
        f"requests per level, {args.output_tokens} output tokens; per server: output tokens/s, "
        "TTFT p50 ms, E2E p50 ms"
    )
    print(f"{'level':16s}" + "".join(f"{label:>30s}" for label in labels))
    for key in table[labels[0]]:
        cells = []
        for label in labels:
            row = table[label].get(key)
            cell = (
                "-"
                if row is None
                else (f"{row['tokens_per_s']:.1f} {row['ttft_p50_ms']:.1f} {row['e2e_p50_ms']:.1f}")
            )
            if row and row["failed"]:
                cell += f" ({row['failed']} failed)"
            cells.append(f"{cell:>30s}")
        print(f"{key:16s}" + "".join(cells))
    for label in labels:
        if label == reference:
            continue
        shared = [k for k in table[label] if k in table[reference]]
        ours, theirs = table[label], table[reference]
        throughput = _geomean([ours[k]["tokens_per_s"] / theirs[k]["tokens_per_s"] for k in shared])
        ttft = _geomean([ours[k]["ttft_p50_ms"] / theirs[k]["ttft_p50_ms"] for k in shared])
        print(
            f"{label} / {reference} over {len(shared)} levels (geometric mean): "
            f"throughput x{throughput:.3f}, TTFT p50 x{ttft:.3f}"
        )


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


if __name__ == "__main__":
    main()
