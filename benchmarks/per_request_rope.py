"""Per-request RoPE scaling on the demo, side by side with the unscaled model and static
Resonance-YaRN x4: perplexity of whole documents and passkey through the API (resonance-eval).

Each configuration is its own server start on the same weights (SmolLM2-135M-Instruct, trained
on 8192 positions). A request's table depends on its own length under per-request, so a 12K
document is scaled at every position there, exactly as under static. Results go to --out, one
folder per configuration; a configuration already there is kept (delete its folder to re-run
it), so the grid can be run in parts.

    python -m benchmarks.per_request_rope [--configs unscaled,static,per-request] [--out DIR]
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchmarks.long_context_quality import resonance_eval
from harness.client import comma_list
from harness.servers import SERVER, free_port, serving

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default=",".join(FLAGS))
    parser.add_argument("--lengths", default=DOCUMENT_LENGTHS)
    parser.add_argument("--passkey-lengths", default=PASSKEY_LENGTHS)
    parser.add_argument("--out", type=Path, default=Path("results/per-request-rope"))
    args = parser.parse_args()
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
