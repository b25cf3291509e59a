"""Resonance-YaRN against YaRN on the same checkpoint and engine settings, in one run.

Both engines stay loaded; the rounds alternate which runs first. Prints the median prefill time
(a batch of long prompts, one output token) and decode throughput (output tokens per second) of
each, and their ratios. The paper's claim is zero run-time overhead: only the table changes.

    python -m benchmarks.rope_overhead [--prompt-tokens 768] [--batch 8] [--rounds 5]
"""

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

ORIGINAL, FACTOR = 256, 4


def checkpoint(root: Path, rope_type: str) -> Path:
    from checkpoints.tiny import build_tiny_checkpoint

    params = {
        "rope_type": rope_type,
        "rope_theta": 10000.0,
        "factor": float(FACTOR),
        "original_max_position_embeddings": ORIGINAL,
    }
    return build_tiny_checkpoint(root / rope_type, params, ORIGINAL * FACTOR)


def timed(llm, prompts, params) -> tuple[float, int]:
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    return elapsed, sum(len(o.outputs[0].token_ids) for o in outputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt-tokens", type=int, default=768)
    parser.add_argument("--output-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    from vllm import LLM, SamplingParams

    with tempfile.TemporaryDirectory() as tmp:
        engines = {
            name: LLM(
                model=str(checkpoint(Path(tmp), name)),
                dtype="float32",
                enforce_eager=True,
                seed=0,
                enable_prefix_caching=False,
            )
            for name in ("resonance_yarn", "yarn")
        }
        prompts = [
            {"prompt_token_ids": [3 + (i * 31 + j * 7) % 1990 for j in range(args.prompt_tokens)]}
            for i in range(args.batch)
        ]
        prefill = SamplingParams(max_tokens=1, temperature=0)
        decode = SamplingParams(max_tokens=args.output_tokens, temperature=0, ignore_eos=True)
        for llm in engines.values():  # warm-up, not counted
            timed(llm, prompts, decode)
        prefill_s: dict[str, list[float]] = {name: [] for name in engines}
        throughput: dict[str, list[float]] = {name: [] for name in engines}
        for round_ in range(args.rounds):
            order = list(engines) if round_ % 2 == 0 else list(reversed(engines))
            for name in order:
                prefill_s[name].append(timed(engines[name], prompts, prefill)[0])
                seconds, tokens = timed(engines[name], prompts, decode)
                throughput[name].append(tokens / seconds)

    med = {
        name: (statistics.median(prefill_s[name]), statistics.median(throughput[name]))
        for name in engines
    }
    print(
        f"batch {args.batch} x {args.prompt_tokens} prompt tokens, {args.output_tokens} output "
        f"tokens, {args.rounds} alternating rounds, median of each"
    )
    for name, (p, t) in med.items():
        print(f"  {name:15s} prefill {p * 1000:8.1f} ms   decode {t:8.1f} tokens/s")
    ratio_prefill = med["resonance_yarn"][0] / med["yarn"][0]
    ratio_throughput = med["resonance_yarn"][1] / med["yarn"][1]
    print(
        f"resonance_yarn / yarn: prefill time x{ratio_prefill:.3f}, "
        f"decode throughput x{ratio_throughput:.3f}"
    )


if __name__ == "__main__":
    main()
