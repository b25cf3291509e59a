"""What test modules of every tier share: the tiny checkpoint's constants, the one launch
recipe for test servers, prompts, and references computed outside the server."""

import contextlib
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from harness.client import sse_data
from harness.servers import SERVER, RunningServer, free_port, stop_server
from harness.servers import start_server as start_process

ORIGINAL_CONTEXT = 256
FACTOR = 4
SERVED_CONTEXT = ORIGINAL_CONTEXT * FACTOR
MODEL_NAME = "tiny-llama2-chat"
API_KEY = "test-key-1"
# Admission limits of the session server (requests, sequences, tokens in flight).
MAX_CONCURRENT, MAX_SEQUENCES, MAX_QUEUED_TOKENS = 32, 48, 40 * SERVED_CONTEXT
RESONANCE_YARN = {
    "rope_type": "resonance_yarn",
    "rope_theta": 10000.0,
    "factor": float(FACTOR),
    "original_max_position_embeddings": ORIGINAL_CONTEXT,
}
PROMPT = "The long river runs past the city at night"

__all__ = ["free_port", "stop_server"]


def token_prompt(length: int, salt: int = 0) -> list[int]:
    """A prompt of ``length`` token ids of the tiny vocabulary (no special tokens)."""
    return [3 + (salt * 131 + 7 * i) % 1990 for i in range(length)]


def start_server(
    args: list[str], log: Path, env: dict | None = None, timeout: float = 240
) -> RunningServer:
    """``python -m server`` with these arguments on a free port, once healthy."""
    port = free_port()
    command = [*SERVER, "--port", str(port), *args]
    return start_process(command, port, log, env=env, timeout=timeout)


@contextlib.contextmanager
def served(args: list[str], log: Path, **kwargs: Any) -> Iterator[RunningServer]:
    """A server for the length of the block (a fixture's), stopped as an orchestrator would."""
    running = start_server(args, log, **kwargs)
    try:
        yield running
    finally:
        stop_server(running)


def keyed_client(server: Any, key: str) -> httpx.Client:
    """httpx against ``server`` (anything with a ``base_url``), sending ``key``."""
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.Client(base_url=server.base_url, headers=headers, timeout=120)


def sse_events(response: httpx.Response) -> list[str]:
    return sse_data(response.iter_lines())


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """``resonance-serve`` as a process, for what only a process shows (its stderr, status)."""
    return subprocess.run([*SERVER, *args], capture_output=True, text=True, timeout=120)


def refusal(*args: str) -> str:
    """What ``resonance-serve ARGS`` says when it refuses to start, run in this process."""
    from server.cli import main

    environment = dict(os.environ)  # start-up sets the engine's variables before it refuses
    try:
        main(list(args))
    except SystemExit as stopped:
        assert stopped.code not in (None, 0), f"{args} did not refuse"
        return str(stopped.code)
    finally:
        os.environ.clear()
        os.environ.update(environment)
    raise AssertionError(f"{args} started and returned")


def offline_greedy(offline_llm: Any, prompt: Any, max_tokens: int) -> str:
    from vllm import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=max_tokens)
    (output,) = offline_llm.generate(prompt, params, use_tqdm=False)
    return output.outputs[0].text


def prompt_logprobs(http: httpx.Client, model: str, ids: list[int]) -> Any:
    """The served log-probability of each prompt token after the first (float64 tensor)."""
    import torch

    body = {"model": model, "prompt": ids, "max_tokens": 1, "echo": True, "logprobs": 0}
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == model
    served = response.json()["choices"][0]["logprobs"]["token_logprobs"][1 : len(ids)]
    return torch.tensor(served, dtype=torch.float64)


def transformers_logprobs(checkpoint: Any, ids: list[int], adapter: Any = None, **config: Any):
    """transformers (+ peft with ``adapter``) on a checkpoint, with the registered RoPE types;
    ``config`` entries replace the checkpoint's own."""
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM

    import rope_plugins

    rope_plugins.register()
    loaded = AutoConfig.from_pretrained(checkpoint)
    for key, value in config.items():
        setattr(loaded, key, value)
    model = AutoModelForCausalLM.from_pretrained(
        checkpoint, config=loaded, dtype=torch.float32, attn_implementation="sdpa"
    )
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    with torch.no_grad():
        logits = model.eval()(torch.tensor([ids])).logits[0, :-1].double()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]


def wait_until(condition, seconds: float = 5) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def raw_request(port: int, body: dict, receive_buffer: int = 4096) -> socket.socket:
    """A streaming request on a socket that will not be read."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect(("127.0.0.1", port))
    payload = json.dumps(body).encode()
    sock.sendall(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    return sock


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """Drain what was sent; True once the server has closed the connection."""
    sock.settimeout(0.5)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if sock.recv(1 << 20) == b"":
                return True
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True
    return False
