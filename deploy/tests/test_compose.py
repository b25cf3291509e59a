"""The compose file's CPU profile brought up with podman-compose: the server and a Prometheus that
scrapes it (Grafana cannot be had offline: its dashboard is validated in
tests/engine/test_deploy.py)."""

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from podman_cli import ENVIRONMENT, PROMETHEUS_IMAGE, REPO, wait_until_healthy

from harness.servers import free_port

COMPOSE = REPO / "deploy" / "compose"
COMPOSE_COMMAND = [sys.executable, "-m", "podman_compose", "--file", "docker-compose.yml"]


def compose(environment: dict[str, str], *args: str) -> None:
    done = subprocess.run(
        [*COMPOSE_COMMAND, "--profile", "cpu", *args],
        cwd=COMPOSE,
        env=environment,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, f"podman-compose {' '.join(args)}:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def stack(cpu_image) -> Iterator[tuple[str, str]]:
    server_port, prometheus_port = free_port(), free_port()
    environment = {
        **ENVIRONMENT,
        "PROMETHEUS_IMAGE": PROMETHEUS_IMAGE,
        "RESONANCE_PUBLISHED_PORT": str(server_port),
        "PROMETHEUS_PUBLISHED_PORT": str(prometheus_port),
    }
    compose(environment, "down", "--volumes")
    started = time.monotonic()
    compose(environment, "up", "--detach", "server-cpu", "prometheus")
    try:
        server = f"http://127.0.0.1:{server_port}"
        wait_until_healthy(server, "resonance-serve_server-cpu_1")
        print(
            f"\ncompose --profile cpu: server healthy {time.monotonic() - started:.0f} s after up"
        )
        yield server, f"http://127.0.0.1:{prometheus_port}"
    finally:
        compose(environment, "down", "--volumes")


def query(prometheus: str, expression: str) -> list[dict]:
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": expression}, timeout=10)
    return answer.json()["data"]["result"]


def eventually(prometheus: str, expression: str, timeout: float = 90) -> list[dict]:
    """The query's result once it is not empty (scrapes are every 5 s)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := query(prometheus, expression):
            return result
        time.sleep(2)
    raise AssertionError(f"{expression}: no sample in {timeout} s")


def test_prometheus_reports_the_server_up_and_counts_a_request(stack):
    server, prometheus = stack
    assert eventually(prometheus, 'up{job="resonance-serve"} == 1')
    body = {"model": "smollm2-135m-instruct", "max_tokens": 4, "prompt": "Hello"}
    assert httpx.post(f"{server}/v1/completions", json=body, timeout=120).status_code == 200
    counted = eventually(prometheus, "sum(resonance_requests_total) > 0")
    assert float(counted[0]["value"][1]) >= 1


def test_prometheus_loads_the_alert_rules(stack):
    _, prometheus = stack
    groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    written = yaml.safe_load(Path(COMPOSE, "prometheus", "rules.yml").read_text())["groups"]
    assert {rule["name"] for group in groups for rule in group["rules"]} == {
        rule["alert"] for group in written for rule in group["rules"]
    }
