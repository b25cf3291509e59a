"""A second server for the tests that break it: deadlines, clients that stall, connections that
never finish, the memory it takes, then a dead engine. It serves the plain checkpoint extended
with resonance_dynamic, so the served log-probabilities of that type are checked here too."""

import json
import re
import shutil
import signal
import socket
import subprocess
import time

import httpx
import numpy as np
import openai
import psutil
import pytest
import torch

import rope_plugins
from harness.client import metric, sse_data
from harness.servers import SERVER, free_port
from tests import reference as ref
from tests.helpers import (
    FACTOR,
    ORIGINAL_CONTEXT,
    SERVED_CONTEXT,
    closed_by_server,
    raw_request,
    start_server,
    stop_server,
    wait_until,
)

# n x max_tokens output tokens take several seconds here, well past the 1 s deadline.
SLOW = {"prompt": "The river", "n": 16, "max_tokens": 240, "ignore_eos": True}
HEADER_TIMEOUT = BODY_TIMEOUT = 2
MAX_CONNECTIONS = 40
MAX_CONCURRENT = 2


@pytest.fixture(scope="module")
def fragile_server(plain_checkpoint, tmp_path_factory):
    running = start_server(
        [
            "--model",
            str(plain_checkpoint),
            "--served-model-name",
            "fragile",
            "--rope-type",
            "resonance_dynamic",
            "--rope-factor",
            str(FACTOR),
            "--dtype",
            "float32",
            "--enforce-eager",
            "--request-timeout",
            "1",
            "--max-concurrent-requests",
            str(MAX_CONCURRENT),
            "--max-queued-tokens",
            "200000",
            "--header-timeout",
            str(HEADER_TIMEOUT),
            "--body-timeout",
            str(BODY_TIMEOUT),
            "--max-connections",
            str(MAX_CONNECTIONS),
        ],
        tmp_path_factory.mktemp("fragile") / "server.log",
        env={"VLLM_CPU_KVCACHE_SPACE": None},  # the server sizes the KV cache itself
    )
    yield running
    stop_server(running)


def test_request_past_its_deadline_is_aborted_with_a_status_clients_do_not_retry(
    fragile_server,
):
    url = fragile_server.base_url
    timeouts = ("resonance_requests_total", 'endpoint="/v1/completions",status="504"')
    before = metric(url, *timeouts)
    start = time.monotonic()
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=2)
    with pytest.raises(openai.APIStatusError) as failure:
        client.completions.create(
            model="fragile",
            prompt=SLOW["prompt"],
            n=SLOW["n"],
            max_tokens=SLOW["max_tokens"],
            extra_body={"ignore_eos": True},
        )
    assert time.monotonic() - start < 5
    assert failure.value.status_code == 504
    assert failure.value.response.headers["x-should-retry"] == "false"
    assert failure.value.body["code"] == "request_timeout"
    assert metric(url, *timeouts) == before + 1  # sent once: the client did not retry
    body = {"model": "fragile", **SLOW, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as stream:
        events = sse_data(stream.iter_lines())
    assert json.loads(events[-1])["error"]["code"] == "request_timeout"
    wait_until(lambda: metric(url, "resonance_num_requests_running") == 0, 10)
    quick = httpx.post(f"{url}/v1/completions", json={"model": "fragile", "prompt": "x"})
    assert quick.status_code == 200


def test_streams_nobody_reads_end_at_the_deadline_and_free_their_places(fragile_server):
    """Two streams of echoed log-probabilities whose clients never read: the engine's work ends
    at the deadline and the places are freed without the clients' help. (This engine sends
    little within the 1 s deadline; a send blocked by full socket buffers, held until the
    send grace, is tested over the fake engine: tests/http/test_surface.py.)"""
    url = fragile_server.base_url
    body = {
        "model": "fragile",
        "prompt": [[3 + (i * 7 + k) % 1990 for i in range(200)] for k in range(4)],
        "n": 16,
        "echo": True,
        "logprobs": 20,
        "max_tokens": 40,
        "stream": True,
    }
    answered = ("resonance_requests_total", 'endpoint="/v1/completions",status="504"')
    before = metric(url, *answered)
    silent = [raw_request(fragile_server.port, body) for _ in range(MAX_CONCURRENT)]
    wait_until(lambda: metric(url, *answered) == before + MAX_CONCURRENT, seconds=20)
    assert metric(url, "resonance_admitted", 'resource="requests"') == 0
    quick = {"model": "fragile", "prompt": "x"}
    # Served again once the engine has ended the step it was in when they were aborted.
    wait_until(lambda: httpx.post(f"{url}/v1/completions", json=quick).status_code == 200, 20)
    assert metric(url, "resonance_num_requests_running") == 0
    assert all(closed_by_server(sock, within=10) for sock in silent)
    for sock in silent:
        sock.close()


def test_connections_that_never_finish_a_request_are_closed(fragile_server):
    port = fragile_server.port
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(MAX_CONNECTIONS + 10)]
    slow_header = socket.create_connection(("127.0.0.1", port))
    slow_body = socket.create_connection(("127.0.0.1", port))
    slow_body.sendall(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{"
    )
    start = time.monotonic()
    for i in range(10):  # one byte a half-second: never a whole header block
        slow_header.sendall(b"GET /health HTTP/1.1\r\n"[i : i + 1])
        time.sleep(0.5)
        if closed_by_server(slow_header, within=0.01):
            break
    assert time.monotonic() - start < HEADER_TIMEOUT + 2
    assert closed_by_server(slow_body, within=BODY_TIMEOUT + 2)
    assert all(closed_by_server(sock, within=HEADER_TIMEOUT + 2) for sock in silent)
    for sock in [*silent, slow_header, slow_body]:
        sock.close()
    assert httpx.get(f"{fragile_server.base_url}/health").status_code == 200


def test_kv_cache_is_sized_for_the_served_context_not_the_machine(fragile_server):
    """Without --cpu-kv-cache-space-gib, vLLM's CPU build would take most of the memory."""
    match = re.search(r"KV cache of the CPU build: (\d+) GiB", fragile_server.output())
    assert match and int(match.group(1)) == 1  # 8 x 1024 tokens x 4 KiB: the 1 GiB minimum
    server = psutil.Process(fragile_server.process.pid)
    total = sum(p.memory_info().rss for p in [server, *server.children(recursive=True)])
    assert total < 6 * 2**30


def test_too_little_kv_cache_is_a_one_line_start_up_error(plain_checkpoint, tmp_path):
    """One sequence of 512K tokens needs 2 GiB of KV cache, not 1: the message names the flag."""
    from tests.helpers import run_cli

    result = run_cli(
        "--model",
        str(plain_checkpoint),
        "--rope-type",
        "yarn",
        "--rope-factor",
        "2048",
        "--dtype",
        "float32",
        "--enforce-eager",
        "--cpu-kv-cache-space-gib",
        "1",
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "--cpu-kv-cache-space-gib" in result.stderr.strip().splitlines()[-1]


def test_a_port_in_use_is_refused_in_one_line_before_the_engine_starts(plain_checkpoint):
    """The port is bound before the engine starts: the refusal comes without an engine's start
    (which would log vLLM's engine configuration first)."""
    from tests.helpers import run_cli

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("--model", str(plain_checkpoint), "--port", str(port))
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert (
        last == f"resonance-serve: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    )
    assert "Initializing a V1 LLM engine" not in result.stdout + result.stderr


def test_resonance_dynamic_serves_dynamic_ntk_at_the_served_length(
    fragile_server, plain_checkpoint
):
    """Served log-probabilities of a prompt filling the context equal transformers' for a
    sequence of that length (whose dynamic NTK base is then the served one)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    ids = [3 + (7 * i) % 1990 for i in range(SERVED_CONTEXT - 1)]
    response = httpx.post(
        f"{fragile_server.base_url}/v1/completions",
        json={"model": "fragile", "prompt": ids, "max_tokens": 1, "echo": True, "logprobs": 0},
        timeout=60,
    )
    served = torch.tensor(response.json()["choices"][0]["logprobs"]["token_logprobs"][1:-1])
    rope_plugins.register()
    config = AutoConfig.from_pretrained(plain_checkpoint)
    config.rope_parameters = {
        "rope_type": "resonance_dynamic",
        "rope_theta": 1e4,
        "factor": float(FACTOR),
    }
    model = AutoModelForCausalLM.from_pretrained(plain_checkpoint, config=config).eval()
    rotary = model.model.rotary_emb
    assert isinstance(rotary, LlamaRotaryEmbedding)
    rotary(torch.zeros(1), torch.arange(SERVED_CONTEXT)[None])  # a sequence of the served length
    base = 1e4 * (FACTOR * SERVED_CONTEXT / ORIGINAL_CONTEXT - (FACTOR - 1)) ** (128 / 126)
    np.testing.assert_allclose(
        rotary.inv_freq.double().numpy(), ref.resonance(ref.rope(128, base)), rtol=1e-6
    )
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1].double()
    expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
    difference = (served.double() - expected).abs()
    assert difference.mean() < 1e-3 and difference.max() < 2e-2  # as for resonance_yarn
    # The same weights with plain RoPE's table are far from what was served (the base grew).
    plain = AutoModelForCausalLM.from_pretrained(plain_checkpoint).eval()
    with torch.no_grad():
        logits = plain(torch.tensor([ids])).logits[0, :-1].double()
    unscaled = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
    assert (served.double() - unscaled).abs().mean() > 10 * difference.mean()


def test_dead_engine_fails_health_and_exits_non_zero(fragile_server):
    server = psutil.Process(fragile_server.process.pid)
    (engine_core,) = [p for p in server.children(recursive=True) if "EngineCore" in p.name()]
    engine_core.send_signal(signal.SIGKILL)
    # The server notices, stops answering health checks and exits so that it is restarted.
    assert fragile_server.process.wait(30) not in (0, None)
    assert "the engine died; exiting so that the server is restarted" in fragile_server.output()


def test_an_engine_that_fails_to_start_exits_the_server_non_zero_within_30_s(
    plain_checkpoint, tmp_path
):
    """Weights cut in half: vLLM's worker process fails while loading them. From the first
    error the engine logs to the server's exit: measured about 12 s."""
    broken = tmp_path / "broken"
    shutil.copytree(plain_checkpoint, broken)
    weights = broken / "model.safetensors"
    with weights.open("r+b") as handle:
        handle.truncate(weights.stat().st_size // 2)
    log = tmp_path / "server.log"
    command = [*SERVER, "--model", str(broken), "--enforce-eager", "--port", str(free_port())]
    with log.open("w") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
    failed_at = None
    try:
        deadline = time.monotonic() + 600
        while process.poll() is None and time.monotonic() < deadline:
            if failed_at is None and " ERROR " in log.read_text(errors="replace"):
                failed_at = time.monotonic()
            if failed_at is not None and time.monotonic() - failed_at > 30:
                break
            time.sleep(0.2)
    finally:
        still_running = process.poll() is None
        process.kill()
        process.wait()
    assert failed_at is not None, log.read_text()[-2000:]
    assert not still_running, "the server did not exit within 30 s of the engine's failure"
    assert process.returncode != 0
    last = log.read_text().strip().splitlines()[-1]
    assert last.startswith("resonance-serve: error:")
