"""Start an HTTP server process, wait until it is healthy, stop it the way an orchestrator does."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

# resonance-serve, in this interpreter (its console script is the same entry point)
SERVER = (sys.executable, "-m", "server")


# The CPU build's engine threads on one core (the first this process may use): for benchmarks
# that train on the other cores while a server scores.
ONE_CORE = {"VLLM_CPU_OMP_THREADS_BIND": str(min(os.sched_getaffinity(0)))}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningServer:
    base_url: str
    process: subprocess.Popen
    log: Path

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def rss_bytes(self) -> int:
        """Resident memory of the server and every process it started (the engine's)."""
        total = 0
        try:
            root = psutil.Process(self.process.pid)
            processes = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += process.memory_info().rss
        return total


def start_server(
    command: Sequence[str],
    port: int,
    log: Path,
    env: dict[str, str | None] | None = None,
    timeout: float = 240,
    cwd: Path | None = None,
) -> RunningServer:
    """Start ``command`` (which must listen on ``port``) and wait until /health answers 200.

    ``env`` adds to this process's environment; a value of None removes the variable; ``cwd``
    (a checkout of another version) is where ``python -m server`` finds its code.
    """
    environment = {**os.environ, **(env or {})}
    environment = {key: value for key, value in environment.items() if value is not None}
    handle = log.open("w")
    process = subprocess.Popen(
        list(command),
        stdout=handle,
        stderr=subprocess.STDOUT,
        env=environment,
        cwd=cwd,
        start_new_session=True,  # its own process group: the engine's processes included
    )
    server = RunningServer(f"http://127.0.0.1:{port}", process, log)
    try:
        _wait_until_healthy(server, timeout)
    except BaseException:  # a timeout, and an interrupt while waiting: nothing left running
        stop_server(server)
        raise
    return server


def _wait_until_healthy(server: RunningServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            code = server.process.returncode
            raise RuntimeError(f"server exited with {code}:\n{server.output()}")
        try:
            if httpx.get(f"{server.base_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server did not become healthy:\n{server.output()}")


def stop_server(server: RunningServer, timeout: float = 60) -> int:
    """SIGTERM, as an orchestrator would; then nothing of the server may be left running."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.process.pid, signal.SIGKILL)
    return server.process.returncode


@contextlib.contextmanager
def serving(command: Sequence[str], port: int, log: Path, **kwargs) -> Iterator[RunningServer]:
    server = start_server(command, port, log, **kwargs)
    try:
        yield server
    finally:
        stop_server(server)
