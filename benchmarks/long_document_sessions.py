"""Long-document sessions on the demo: prefix caching on and off, and vLLM's own server.

Each of --users users holds its own document of --document-tokens tokens and asks --turns
questions in one conversation (`resonance-loadtest --sessions`); the same workload goes to
resonance-serve with prefix caching (vLLM's default), without it, and to vLLM's own OpenAI
server on the same converted checkpoint with the same RoPE override and engine settings.

    python -m benchmarks.long_document_sessions [--users 2] [--turns 3] [--document-tokens 4096]
"""

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

from harness.servers import SERVER, free_port, serving
from loadtests.api import Options, run_session_load
from loadtests.sessions import report_runs

MODEL = "smollm2-135m-instruct"
TRAINED, FACTOR = 8192, 4
ENGINE = ["--enforce-eager", "--max-num-seqs", "4"]
ENV = {"VLLM_CPU_KVCACHE_SPACE": "2"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--document-tokens", type=int, default=4096)
    parser.add_argument("--output-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        ours = [*SERVER, "--cache-dir", str(cache), *ENGINE, "--cpu-kv-cache-space-gib", "2"]
        port = free_port()
        with serving([*ours, "--port", str(port)], port, Path(tmp) / "convert.log", timeout=900):
            pass  # converts the GGUF file once
        (folder,) = cache.iterdir()
        override = {
            "rope_parameters": {
                "rope_type": "resonance_yarn",
                "rope_theta": 100000.0,
                "factor": float(FACTOR),
                "original_max_position_embeddings": TRAINED,
                "beta_fast": 32.0,
                "beta_slow": 1.0,
            },
            "max_position_embeddings": TRAINED * FACTOR,
        }
        vllm = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(folder),
            "--served-model-name",
            MODEL,
            "--dtype",
            "float32",
            *ENGINE,
            "--hf-overrides",
            json.dumps(override),
            "--max-model-len",
            str(TRAINED * FACTOR),
        ]
        variants = {
            "resonance-serve, prefix caching": ours,
            "resonance-serve, no prefix caching": [*ours, "--no-enable-prefix-caching"],
            "vLLM's server, prefix caching": vllm,
        }
        results = {}
        for label, command in variants.items():
            port = free_port()
            log = Path(tmp) / f"{len(results)}.log"
            with serving([*command, "--port", str(port)], port, log, env=ENV, timeout=900) as s:
                options = Options(
                    base_url=s.base_url,
                    model=MODEL,
                    prompt_tokens=[],
                    output_tokens=args.output_tokens,
                    sessions=args.users,
                    turns=args.turns,
                    document_tokens=args.document_tokens,
                    out=None,
                )
                results[label] = asyncio.run(run_session_load(options))
    report_runs(results, args.out, "sessions.json")


if __name__ == "__main__":
    main()
