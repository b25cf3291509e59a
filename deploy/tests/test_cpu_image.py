"""The CPU image: what it holds, how it fails (a bad setting, an engine that cannot start), and run
as the README runs it: the README's examples answered, a structured output (xgrammar without
triton), a SIGTERM that drains and exits 0."""

import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from openai import OpenAI
from podman_cli import podman, podman_result, wait_until_healthy

from harness.servers import free_port

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def container(cpu_image) -> Iterator[tuple[str, str]]:
    name = "resonance-test-cpu"
    port = free_port()
    podman("rm", "--force", "--ignore", name)
    podman("run", "--detach", "--name", name, "--shm-size", "1g", "-p", f"{port}:8000", cpu_image)
    base_url = f"http://127.0.0.1:{port}"
    try:
        print(f"\n{name}: /health after {wait_until_healthy(base_url, name):.0f} s")
        yield name, base_url
    finally:
        podman("rm", "--force", "--ignore", name)


def test_the_image_holds_no_triton_opencv_or_cuda_torch(cpu_image):
    found = podman(
        "run",
        "--rm",
        "--entrypoint",
        "python",
        cpu_image,
        "-c",
        "import importlib.util as u, torch; print("
        "[m for m in ('triton', 'cv2', 'torchvision') if u.find_spec(m)], torch.version.cuda)",
    )
    assert found.strip() == "[] None"


def test_a_model_that_does_not_exist_is_one_line_and_a_non_zero_exit(cpu_image):
    done = podman_result("run", "--rm", cpu_image, "--model", "/models/nothing-here")
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith("resonance-serve: error:")


def test_an_engine_that_fails_at_start_stops_the_container_non_zero_within_30_s(cpu_image):
    """A container's default 64 MB of /dev/shm: vLLM's engine process fails at start."""
    name = "resonance-test-small-shm"
    podman("rm", "--force", "--ignore", name)
    podman("run", "--detach", "--name", name, cpu_image)
    try:
        failed_at = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if podman("inspect", "--format", "{{.State.Status}}", name).strip() == "exited":
                break
            if failed_at is None and " ERROR " in podman("logs", name):  # vLLM logs to stdout
                failed_at = time.monotonic()
            assert failed_at is None or time.monotonic() - failed_at < 30, "still running"
            time.sleep(0.5)
        assert podman("inspect", "--format", "{{.State.ExitCode}}", name).strip() != "0"
        errors = podman_result("logs", name).stderr
        assert errors.strip().splitlines()[-1].startswith("resonance-serve: error:")
        assert "Insufficient space in /dev/shm" in errors
    finally:
        podman("rm", "--force", "--ignore", name)


def test_the_readme_chat_example_answers_as_documented(container):
    _, base_url = container
    body = {
        "model": MODEL,
        "temperature": 0,
        "max_tokens": 32,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
    }
    answer = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=120).json()
    assert "Paris" in answer["choices"][0]["message"]["content"]


def test_a_streamed_completion_equals_the_whole_one(container):
    _, base_url = container
    client = OpenAI(base_url=f"{base_url}/v1", api_key="unused", timeout=120)
    request = {"model": MODEL, "prompt": "The long river", "max_tokens": 24, "temperature": 0}
    whole = client.completions.create(**request).choices[0].text
    chunks = [c.choices[0].text for c in client.completions.create(**request, stream=True)]
    assert len(chunks) > 1
    assert "".join(chunks) == whole


def test_a_json_schema_response_is_held_to_its_schema(container):
    _, base_url = container
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 20}},
        "required": ["city"],
        "additionalProperties": False,
    }
    client = OpenAI(base_url=f"{base_url}/v1", api_key="unused", timeout=120)
    answer = client.chat.completions.create(
        model=MODEL,
        temperature=0,
        max_tokens=40,
        messages=[{"role": "user", "content": "Which city is the capital of France?"}],
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
    )
    assert set(json.loads(answer.choices[0].message.content, strict=False)) == {"city"}


def test_sigterm_finishes_the_request_in_flight_and_exits_0(container):
    name, base_url = container
    client = OpenAI(base_url=f"{base_url}/v1", api_key="unused", timeout=300)
    finished: list[str | None] = []

    def long_request() -> None:
        stream = client.completions.create(
            model=MODEL,
            prompt="Once upon a time",
            max_tokens=200,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        finished.extend(c.choices[0].finish_reason for c in stream if c.choices)

    worker = threading.Thread(target=long_request)
    worker.start()
    time.sleep(2)
    started = time.monotonic()
    podman("stop", "--time", "120", name, timeout=180)
    worker.join(10)
    print(f"\n{name}: stopped in {time.monotonic() - started:.1f} s")
    assert finished[-1] == "length"
    assert podman("inspect", "--format", "{{.State.ExitCode}}", name).strip() == "0"
