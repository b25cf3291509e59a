"""Hostile load, round three: the attacks of a red-team pass, each against a real server.

Each probe takes a running server (started from the current directory, so a checkout of an
older version measures that version) and returns what it measured; `tests/slow` holds the
current version to them, and `main` prints them for docs/RESULTS.md section 4:

    python -m benchmarks.hostile_round3 [--probes lockout,stall,...] [--server-dir DIR] \
        [--out FILE.json]

``--server-dir DIR``: a checkout of another version (``git worktree add DIR COMMIT``), whose
``python -m server`` runs from DIR with this environment's packages.

Settings new in this round reach the server as RESONANCE_* variables, which an older version
ignores, so both versions run with the same command.
"""

import argparse
import concurrent.futures
import contextlib
import json
import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

from checkpoints.tiny import build_tiny_checkpoint
from harness.servers import SERVER, RunningServer, free_port, start_server, stop_server

KEY = "sekrit"
HEADERS = {"Authorization": f"Bearer {KEY}"}
MODEL = "tiny"
LIVENESS_SECONDS, DRAIN_SECONDS = 5, 5
ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "RESONANCE_LIVENESS_TIMEOUT": str(LIVENESS_SECONDS),
    "RESONANCE_DRAIN_TIMEOUT": str(DRAIN_SECONDS),
    "RESONANCE_LORA_LOAD_TIMEOUT": "10",
}


def server_flags(checkpoint: Path) -> list[str]:
    return [
        "--model",
        str(checkpoint),
        "--served-model-name",
        MODEL,
        "--api-key",
        KEY,
        "--rope-type",
        "resonance_yarn",
        "--rope-factor",
        "4",
        "--dtype",
        "float32",
        "--enforce-eager",
        "--request-timeout",
        "120",
    ]


@contextlib.contextmanager
def hostile_server(flags: list[str], log: Path, cwd: Path | None = None) -> Iterator[RunningServer]:
    port = free_port()
    command = [*SERVER, "--port", str(port), *flags]
    server = start_server(command, port, log, env=ENV, timeout=300, cwd=cwd)
    try:
        yield server
    finally:
        if server.process.poll() is None:
            stop_server(server)


def completion(server: RunningServer, body: dict, timeout: float = 120) -> httpx.Response:
    return httpx.post(
        f"{server.base_url}/v1/completions",
        json={"model": MODEL, **body},
        headers=HEADERS,
        timeout=timeout,
    )


def chat(server: RunningServer, body: dict, timeout: float = 120) -> httpx.Response:
    messages = [{"role": "user", "content": "Name a city."}]
    return httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"model": MODEL, "messages": messages, **body},
        headers=HEADERS,
        timeout=timeout,
    )


def status_of(call: Callable[[], httpx.Response]) -> int | str:
    try:
        return call().status_code
    except httpx.HTTPError as error:
        return type(error).__name__


def prompt(length: int, salt: int) -> list[int]:
    return [3 + (salt * 131 + 7 * i) % 1990 for i in range(length)]


# ------------------------------------------------------------------------------ probes
def probe_lora_prompt_logprobs(server: RunningServer) -> dict[str, Any]:
    """Two concurrent 900-token prompt_logprobs requests and an echo on a LoRA server."""
    bodies = [{"prompt": prompt(900, s), "max_tokens": 1, "prompt_logprobs": 1} for s in (1, 2)]
    bodies.append({"prompt": prompt(900, 3), "max_tokens": 4, "echo": True, "logprobs": 0})
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        statuses = list(pool.map(lambda b: status_of(lambda: completion(server, b)), bodies))
    time.sleep(1)
    return {"statuses": statuses, "server_alive": server.process.poll() is None}


def probe_lockout(
    server: RunningServer, sockets: int = 1100, seconds: float = 40, refresh: float = 8
) -> dict[str, Any]:
    """Idle sockets past --max-connections, reopened every ``refresh`` s, while /health is
    probed twice a second."""
    host, port = "127.0.0.1", server.port
    stop = threading.Event()

    def hold() -> None:
        while not stop.is_set():
            opened = []
            for _ in range(sockets):
                with contextlib.suppress(OSError):
                    opened.append(socket.create_connection((host, port), timeout=5))
            stop.wait(refresh)
            for sock in opened:
                sock.close()

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    time.sleep(2)
    answered = probes = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        probes += 1
        answered += status_of(lambda: httpx.get(f"{server.base_url}/health", timeout=2)) == 200
        time.sleep(0.5)
    stop.set()
    holder.join(30)
    return {"health_answered": answered, "health_probes": probes}


def engine_core(server: RunningServer) -> psutil.Process:
    for child in psutil.Process(server.process.pid).children(recursive=True):
        if "EngineCore" in " ".join(child.cmdline()) or "EngineCore" in child.name():
            return child
    raise RuntimeError("no engine core process found")


def probe_stall(server: RunningServer, stopped_for: float = 20) -> dict[str, Any]:
    """SIGSTOP the engine core with a request in it; /health each second; then SIGCONT."""
    core = engine_core(server)
    long_request = {"prompt": prompt(100, 7), "max_tokens": 900, "ignore_eos": True}
    pending = concurrent.futures.ThreadPoolExecutor(1).submit(completion, server, long_request)
    time.sleep(0.5)  # (it runs for seconds: still in the engine when the engine stops)
    core.send_signal(signal.SIGSTOP)
    started, first_failure = time.monotonic(), None
    try:
        while time.monotonic() - started < stopped_for:
            status = status_of(lambda: httpx.get(f"{server.base_url}/health", timeout=2))
            if status != 200 and first_failure is None:
                first_failure = time.monotonic() - started
            time.sleep(1)
    finally:
        core.send_signal(signal.SIGCONT)
    finished = status_of(lambda: pending.result(timeout=120))
    time.sleep(1)
    return {
        "health_failed_after_s": first_failure,
        "health_after_sigcont": status_of(lambda: httpx.get(f"{server.base_url}/health")),
        "stalled_request": finished,
        "request_after": status_of(lambda: completion(server, {"prompt": "x", "max_tokens": 4})),
    }


def probe_constraints(server: RunningServer) -> dict[str, Any]:
    """Eight 100,000-entry choice lists at once, and a json_object request beside them."""
    hostile = {"structured_outputs": {"choice": [f"c{i}" for i in range(100_000)]}}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        started = time.monotonic()
        flood = [pool.submit(chat, server, {**hostile, "max_tokens": 5}) for _ in range(8)]
        time.sleep(0.5)
        benign = chat(server, {"response_format": {"type": "json_object"}, "max_tokens": 20})
        benign_seconds = time.monotonic() - started
        statuses = [f.result().status_code for f in flood]
        slowest = time.monotonic() - started
    return {
        "benign": benign.status_code,
        "benign_s": round(benign_seconds, 2),
        "hostile": sorted(set(statuses)),
        "slowest_hostile_s": round(slowest, 2),
    }


def probe_small_inputs(server: RunningServer) -> dict[str, Any]:
    deep = "[" * 5000 + "]" * 5000
    history = [
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c", "type": "function", "function": {"name": "f", "arguments": deep}}
            ],
        },
        {"role": "tool", "tool_call_id": "c", "content": "ok"},
    ]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    loop = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#"}}}
    started = time.monotonic()
    detokenize = status_of(
        lambda: httpx.post(
            f"{server.base_url}/detokenize",
            json={"tokens": [5] * 1_600_000},
            headers=HEADERS,
            timeout=60,
        )
    )
    return {
        "nested_arguments": status_of(
            lambda: chat(server, {"messages": history, "tools": tools, "max_tokens": 2})
        ),
        "ref_cycle": status_of(lambda: chat(server, {"response_format": loop, "max_tokens": 5})),
        "logit_bias_superscript": status_of(
            lambda: completion(server, {"prompt": "x", "logit_bias": {"\u00b2": 1}})
        ),
        "logit_bias_arabic_indic": status_of(
            lambda: completion(server, {"prompt": "x", "logit_bias": {"\u0661": 1}})
        ),
        "detokenize_1.6M": detokenize,
        "detokenize_s": round(time.monotonic() - started, 2),
    }


def probe_memory(server: RunningServer, rounds: int = 6, per_round: int = 10) -> dict[str, Any]:
    """The same large tool-schema request again and again: the front end's RSS after each
    round. A leak grows with every round; memory that allocators keep stays level."""
    tools = [
        {
            "type": "function",
            "function": {
                "name": f"tool_{i}",
                "parameters": {
                    "type": "object",
                    "properties": {
                        f"field_{j}": {"type": "string", "enum": [f"v{k}" for k in range(40)]}
                        for j in range(20)
                    },
                },
            },
        }
        for i in range(20)
    ]
    body = {"tools": tools, "tool_choice": "required", "max_tokens": 16}
    front_end = psutil.Process(server.process.pid)
    rss = [round(front_end.memory_info().rss / 2**20)]
    for _ in range(rounds):
        for _ in range(per_round):
            chat(server, body)
        rss.append(round(front_end.memory_info().rss / 2**20))
    return {"front_end_rss_mib_by_round": rss}


def probe_idle_memory(server: RunningServer, requests: int = 40) -> dict[str, Any]:
    """Many different large tool-schema requests, then 40 s idle: the front end's RSS before,
    right after and after the idle time (memory the requests freed, given back or kept)."""
    front_end = psutil.Process(server.process.pid)

    def mib() -> int:
        return round(front_end.memory_info().rss / 2**20)

    start = mib()
    for n in range(requests):
        tools = [
            {
                "type": "function",
                "function": {
                    "name": f"t{n}_{i}",
                    "parameters": {
                        "type": "object",
                        "properties": {
                            f"f{n}_{j}": {"type": "string", "description": "x" * 2000}
                            for j in range(40)
                        },
                    },
                },
            }
            for i in range(20)
        ]
        chat(server, {"tools": tools, "tool_choice": "required", "max_tokens": 8})
    after = mib()
    time.sleep(40)
    return {"rss_mib_start": start, "rss_mib_after_requests": after, "rss_mib_idle_40s": mib()}


def probe_lora_fifo(server: RunningServer, folder: Path) -> dict[str, Any]:
    """A runtime load of an adapter whose adapter_config.json is a FIFO nobody writes."""
    fifo_dir = folder / "fifo-adapter"
    fifo_dir.mkdir(exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkfifo(fifo_dir / "adapter_config.json")
    url = f"{server.base_url}/v1/load_lora_adapter"
    body = {"lora_name": "fifo", "lora_path": str(fifo_dir)}
    loading = concurrent.futures.ThreadPoolExecutor(1).submit(
        lambda: httpx.post(url, json=body, headers=HEADERS, timeout=60)
    )
    time.sleep(1)
    health_times = []
    for _ in range(5):
        started = time.monotonic()
        status_of(lambda: httpx.get(f"{server.base_url}/health", timeout=10))
        health_times.append(round(time.monotonic() - started, 3))
    try:
        load = loading.result(timeout=60).status_code
    except (concurrent.futures.TimeoutError, httpx.HTTPError) as error:
        load = type(error).__name__
    with contextlib.suppress(OSError):  # a reader still blocked on it (an older server) ends
        writer = os.open(fifo_dir / "adapter_config.json", os.O_WRONLY | os.O_NONBLOCK)
        os.write(writer, b"{}")
        os.close(writer)
    return {"slowest_health_s": max(health_times), "load": load}


def probe_drain(server: RunningServer) -> dict[str, Any]:
    """SIGTERM with a stream open whose client reads nothing (its receive buffer made small
    before it connects, and far more events than the buffers hold); time to exit, status."""
    body = json.dumps(
        {
            "model": MODEL,
            "prompt": prompt(100, 9),
            "max_tokens": 900,
            "ignore_eos": True,
            "stream": True,
            "logprobs": 20,
            "n": 16,
        }
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(
        f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode()
    )
    time.sleep(2)
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    try:
        code = server.process.wait(timeout=120)
    except Exception:
        code = "still running after 120 s"
        server.process.kill()
    sock.close()
    return {"exit_s": round(time.monotonic() - started, 1), "exit_status": code}


# ------------------------------------------------------------------------------ running
# Each probe, in the order it runs, and the server it needs (the LoRA ones first: on an older
# server the first may hang it and the second kill it; drain last: it stops its server).
PROBES: dict[str, tuple[str, Callable[[RunningServer, Path], dict[str, Any]]]] = {
    "lora_fifo": ("lora", probe_lora_fifo),
    "lora_prompt_logprobs": ("lora", lambda server, root: probe_lora_prompt_logprobs(server)),
    "memory": ("base", lambda server, root: probe_memory(server)),
    "idle_memory": ("base", lambda server, root: probe_idle_memory(server)),
    "lockout": ("base", lambda server, root: probe_lockout(server)),
    "stall": ("base", lambda server, root: probe_stall(server)),
    "constraints": ("base", lambda server, root: probe_constraints(server)),
    "small_inputs": ("base", lambda server, root: probe_small_inputs(server)),
    "drain": ("base", lambda server, root: probe_drain(server)),
}


def run(names: list[str], root: Path, cwd: Path | None = None) -> dict[str, dict[str, Any]]:
    plain = build_tiny_checkpoint(root / "plain")
    servers = {
        "lora": [*server_flags(plain), "--allow-runtime-lora", "--max-lora-rank", "8"],
        "base": server_flags(plain),
    }
    results: dict[str, dict[str, Any]] = {}
    for kind, flags in servers.items():
        chosen = [name for name in PROBES if name in names and PROBES[name][0] == kind]
        if not chosen:
            continue
        with hostile_server(flags, root / f"{kind}.log", cwd) as server:
            for name in chosen:
                print(f"probe {name}", flush=True)
                results[name] = PROBES[name][1](server, root)
                print(json.dumps(results[name]), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", default=",".join(PROBES))
    parser.add_argument("--server-dir", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    cwd = args.server_dir.resolve() if args.server_dir else None
    with tempfile.TemporaryDirectory() as tmp:
        results = run(args.probes.split(","), Path(tmp), cwd)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
