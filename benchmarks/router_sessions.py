"""Two replicas of the demo behind vllm-router: session affinity against round-robin.

The long-document session workload (`resonance-loadtest --sessions`: each user's turns carry
``X-Session-ID``) goes through vllm-router in front of two replicas, once with the router's
``consistent_hash`` policy and once with ``round_robin``, each run on documents of its own (so
nothing is cached from the other run). Each replica's engine is bound to a core of its own.
Figures: the follow-ups' time to first token and the share of their prompt served from cache.

    python -m benchmarks.router_sessions [--users 4] [--turns 3] [--document-tokens 1024]
"""

import argparse
import asyncio
import concurrent.futures
import os
import shutil
import sys
import tempfile
from pathlib import Path

from harness.servers import SERVER, free_port, serving, start_server, stop_server
from loadtests.api import Options, run_session_load
from loadtests.sessions import report_runs
from server.plan import THREADS_BIND

MODEL = "smollm2-135m-instruct"
ROUTER = shutil.which("vllm-router", path=str(Path(sys.executable).parent))
REPLICA = [
    "--enforce-eager",
    "--max-num-seqs",
    "4",
    "--max-model-len",
    "8192",
    "--cpu-kv-cache-space-gib",
    "1",
]
ROUTER_HEALTH = [
    "--health-check-interval-secs",
    "2",
    "--health-failure-threshold",
    "1",
    "--cb-failure-threshold",
    "1",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--document-tokens", type=int, default=1024)
    parser.add_argument("--output-tokens", type=int, default=16)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        # converted once, before two replicas would both convert it
        port = free_port()
        with serving(
            [*SERVER, "--cache-dir", str(folder / "cache"), *REPLICA, "--port", str(port)],
            port,
            folder / "convert.log",
            timeout=900,
        ):
            pass

        def replica(index: int):
            port = free_port()
            command = [*SERVER, "--cache-dir", str(folder / "cache"), *REPLICA, "--port", str(port)]
            env = {THREADS_BIND: str(cores[index % len(cores)])}
            return start_server(command, port, folder / f"replica{index}.log", env=env, timeout=900)

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            replicas = list(pool.map(replica, (0, 1)))
        results = {}
        try:
            for run, policy in enumerate(("consistent_hash", "round_robin")):
                port = free_port()
                command = [
                    ROUTER,
                    "--port",
                    str(port),
                    "--worker-urls",
                    *[r.base_url for r in replicas],
                    "--policy",
                    policy,
                    "--prometheus-port",
                    str(free_port()),
                    *ROUTER_HEALTH,
                ]
                with serving(command, port, folder / f"router-{policy}.log") as router:
                    options = Options(
                        base_url=router.base_url,
                        model=MODEL,
                        prompt_tokens=[],
                        output_tokens=args.output_tokens,
                        sessions=args.users,
                        turns=args.turns,
                        document_tokens=args.document_tokens,
                        first_document=100 * run,
                    )
                    results[policy] = asyncio.run(run_session_load(options))
        finally:
            for server in replicas:
                stop_server(server)
    labelled = {f"vllm-router --policy {p}, two replicas": s for p, s in results.items()}
    report_runs(labelled, args.out, "router_sessions.json")


if __name__ == "__main__":
    main()
