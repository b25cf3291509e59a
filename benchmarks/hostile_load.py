"""The server as an attacker meets it: one probe per attack, each reported with what it saw.

Starts ``python -m server`` from the current directory (so a checkout of an older version
measures that version) on a tiny checkpoint with an API key, 8 concurrent requests at most and
a 20 s request timeout, and with no KV-cache setting (the server's or vLLM's default).

    python -m benchmarks.hostile_load [--probes flood,sequences,...]
"""

import argparse
import concurrent.futures
import json
import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil

from checkpoints.tiny import build_tiny_checkpoint
from harness.client import comma_list, metric
from harness.servers import SERVER, RunningServer, free_port, start_server, stop_server

KEY = "sekrit"
HEADERS = {"Authorization": f"Bearer {KEY}"}
TIMEOUT = 20


def post(server: RunningServer, body: dict, timeout: float = 120) -> httpx.Response:
    data = json.dumps({"model": "tiny", **body})
    headers = {**HEADERS, "Content-Type": "application/json"}
    return httpx.post(
        f"{server.base_url}/v1/completions", content=data, headers=headers, timeout=timeout
    )


def timed(call: Callable[[], httpx.Response]) -> tuple[int, float]:
    start = time.monotonic()
    try:
        status = call().status_code
    except httpx.HTTPError as error:
        status = type(error).__name__
    return status, time.monotonic() - start


def probe_flood(server: RunningServer) -> str:
    body = {"prompt": "word " * 1_560_000, "max_tokens": 1}  # 7.8 MB, far over the context
    front_end = psutil.Process(server.process.pid)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        flood = [pool.submit(timed, lambda: post(server, body)) for _ in range(8)]
        time.sleep(0.3)
        small_status, small = timed(lambda: post(server, {"prompt": "hi", "max_tokens": 4}))
        refusals = [f.result() for f in flood]
    slowest = max(seconds for _, seconds in refusals)
    statuses = sorted({str(status) for status, _ in refusals})
    rss = front_end.memory_info().rss / 2**30
    return (
        f"small request {small_status} in {small:.2f} s; oversized {'/'.join(statuses)}, "
        f"slowest {slowest:.2f} s; front-end RSS after {rss:.2f} GiB"
    )


def probe_bad_values(server: RunningServer) -> str:
    cases = {
        "temperature 2.5": {"prompt": "a", "temperature": 2.5},
        'stop ""': {"prompt": "a", "stop": ""},
        "lone surrogate": {"prompt": "\ud800"},
    }
    return ", ".join(f"{name}: {post(server, body).status_code}" for name, body in cases.items())


def probe_sequences(server: RunningServer) -> str:
    big = {"prompt": [[5]] * 100, "n": 16, "max_tokens": 1000, "ignore_eos": True}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(timed, lambda: post(server, big, timeout=60))
        time.sleep(1)
        _, seconds = timed(lambda: post(server, {"prompt": "hi", "max_tokens": 2}))
        big_status = first.result()[0]
    return f"100 prompts x n 16: {big_status}; a 2-token request a second later: {seconds:.2f} s"


def raw_stream(port: int, body: dict) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    payload = json.dumps({"model": "tiny", **body}).encode()
    sock.sendall(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {KEY}\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    return sock


def probe_unread_streams(server: RunningServer) -> str:
    body = {
        "prompt": [3 + i % 1000 for i in range(200)],
        "n": 16,
        "echo": True,
        "logprobs": 20,
        "max_tokens": 200,
        "stream": True,
    }
    sockets = [raw_stream(server.port, body) for _ in range(8)]
    time.sleep(TIMEOUT + 10)
    status = post(server, {"prompt": "hi", "max_tokens": 2}, timeout=30).status_code
    for sock in sockets:
        sock.close()
    return f"8 streams never read; {TIMEOUT + 10} s later a new request gets {status}"


def probe_health_under_streams(server: RunningServer) -> str:
    body = {
        "prompt": "hello",
        "n": 16,
        "logprobs": 20,
        "max_tokens": 1000,
        "ignore_eos": True,
        "stream": True,
    }
    statuses: list[int] = []

    def stream() -> None:
        with httpx.stream(
            "POST",
            f"{server.base_url}/v1/completions",
            json={"model": "tiny", **body},
            headers=HEADERS,
            timeout=120,
        ) as response:
            statuses.append(response.status_code)
            for _ in response.iter_bytes():
                pass

    threads = [threading.Thread(target=stream) for _ in range(8)]
    for thread in threads:
        thread.start()
    worst, deadline = 0.0, time.monotonic() + 15
    while time.monotonic() < deadline and any(t.is_alive() for t in threads):
        start = time.monotonic()
        httpx.get(f"{server.base_url}/health", timeout=60)
        worst = max(worst, time.monotonic() - start)
        time.sleep(0.1)
    for thread in threads:
        thread.join()
    admitted = statuses.count(200)
    return f"{admitted} of 8 streams admitted; slowest /health {worst * 1000:.0f} ms"


def probe_silent_connections(server: RunningServer) -> str:
    silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(200)]
    slow = socket.create_connection(("127.0.0.1", server.port))
    slow_closed = "still open after 30 s"
    trickle = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: y\r\n" * 10
    for second in range(30):
        try:
            slow.sendall(trickle[second : second + 1])  # a byte a second: headers never end
        except OSError:
            slow_closed = f"closed by the server after {second} s"
            break
        time.sleep(1)
    time.sleep(max(0.0, 30 - second))
    open_count = 0
    for sock in silent:
        sock.settimeout(0.05)
        try:
            open_count += sock.recv(1) != b""
        except TimeoutError:
            open_count += 1
        except OSError:
            pass
        sock.close()
    return f"{open_count} of 200 silent sockets still open after 30 s; a slow header {slow_closed}"


def probe_open_routes(server: RunningServer) -> str:
    docs = httpx.get(f"{server.base_url}/docs").status_code
    schema = httpx.get(f"{server.base_url}/openapi.json").status_code
    root = httpx.get(f"{server.base_url}/v1/models", headers=HEADERS).json()["data"][0]["root"]
    return f"/docs {docs}, /openapi.json {schema} without a key; models root {root!r}"


def probe_timeout(server: RunningServer) -> str:
    from openai import APIStatusError, OpenAI

    client = OpenAI(base_url=f"{server.base_url}/v1", api_key=KEY, max_retries=2)
    before = _requests_total(server)
    start = time.monotonic()
    try:
        client.completions.create(
            model="tiny",
            prompt="x",
            n=16,
            max_tokens=1000,
            extra_body={"ignore_eos": True, "logprobs": 20},
        )
        outcome = "completed"
    except APIStatusError as error:
        outcome = str(error.status_code)
    sent = _requests_total(server) - before
    return f"{outcome} after {time.monotonic() - start:.0f} s; the client sent it {sent:g} times"


def _requests_total(server: RunningServer) -> float:
    return metric(server.base_url, "resonance_requests_total", 'endpoint="/v1/completions"')


def probe_memory(server: RunningServer) -> str:
    return f"idle RSS of the server and its engine {server.rss_bytes() / 2**30:.2f} GiB"


def probe_group_sigterm(server: RunningServer) -> str:
    body = {
        "model": "tiny",
        "prompt": "hi",
        "n": 8,
        "max_tokens": 500,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.stream(
        "POST", f"{server.base_url}/v1/completions", json=body, headers=HEADERS, timeout=120
    ) as response:
        lines = response.iter_lines()
        next(lines)
        os.killpg(server.process.pid, signal.SIGTERM)
        try:
            last = [line for line in lines if line.startswith("data: ")][-1]
        except httpx.HTTPError as error:
            last = type(error).__name__
    code = server.process.wait(60)
    return f"stream ended with {last[:40]!r}; exit code {code}"


PROBES = {
    "flood": probe_flood,
    "bad_values": probe_bad_values,
    "sequences": probe_sequences,
    "unread_streams": probe_unread_streams,
    "health": probe_health_under_streams,
    "connections": probe_silent_connections,
    "open_routes": probe_open_routes,
    "timeout": probe_timeout,
    "memory": probe_memory,
    "group_sigterm": probe_group_sigterm,  # last: it stops the server
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", default=",".join(PROBES))
    parser.add_argument("--kv-cache-gib", default=None, help="VLLM_CPU_KVCACHE_SPACE (unset)")
    args = parser.parse_args()
    env = {"VLLM_CPU_KVCACHE_SPACE": args.kv_cache_gib}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = build_tiny_checkpoint(Path(tmp) / "model", max_position_embeddings=256)
        port = free_port()
        command = [
            *SERVER,
            "--port",
            str(port),
            "--model",
            str(checkpoint),
            "--served-model-name",
            "tiny",
            "--dtype",
            "float32",
            "--enforce-eager",
            "--rope-type",
            "resonance_yarn",
            "--rope-factor",
            "4",
            "--api-key",
            KEY,
            "--max-concurrent-requests",
            "8",
            "--request-timeout",
            str(TIMEOUT),
        ]
        server = start_server(command, port, Path(tmp) / "server.log", env=env)
        try:
            for name in comma_list(args.probes):
                try:
                    print(f"{name}: {PROBES[name](server)}", flush=True)
                except Exception as error:  # a probe that breaks the server is a finding too
                    print(f"{name}: probe failed: {type(error).__name__}: {error}", flush=True)
        finally:
            stop_server(server)


if __name__ == "__main__":
    main()
