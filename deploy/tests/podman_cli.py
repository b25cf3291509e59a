"""podman for `make test-deploy`: the project's container settings, image builds that reach the
host's pip configuration through build-time mounts (nothing of it is copied into an image), and
containers waited on over HTTP."""

import ast
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx

REPO = Path(__file__).resolve().parents[2]
SETTINGS = REPO / "deploy" / "podman"
ENVIRONMENT = {
    **os.environ,
    "CONTAINERS_CONF": str(SETTINGS / "containers.conf"),
    "CONTAINERS_REGISTRIES_CONF": str(SETTINGS / "registries.conf"),
}
CPU_IMAGE = "localhost/resonance-serve:cpu"
PROMETHEUS_IMAGE = "localhost/prometheus:debian"


def podman_result(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["podman", *args], env=ENVIRONMENT, capture_output=True, text=True, timeout=timeout
    )


def podman(*args: str, timeout: float = 600) -> str:
    """podman's output; its error output in the failure if it exits non-zero."""
    done = podman_result(*args, timeout=timeout)
    if done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {done.returncode}:\n{done.stderr}")
    return done.stdout


def pip_config() -> dict[str, str]:
    """pip's own configured options (`pip config list`); the environment's win over files'."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    ).stdout
    files: dict[str, str] = {}
    environment: dict[str, str] = {}
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        scope, _, name = key.partition(".")
        (environment if scope == ":env:" else files)[name] = ast.literal_eval(value)
    return files | environment


def _local(location: str) -> Path | None:
    parsed = urlparse(location)
    if parsed.scheme in ("", "file"):
        return Path(parsed.path)
    return None


def pip_build_options(config: dict[str, str]) -> list[str]:
    """`podman build` options giving pip in the build what pip here uses: its find-links
    directories and local indexes (mounted read-only at the same paths), its CA bundle, and its
    cache (mounted read-write, so a second build downloads nothing)."""
    options: list[str] = []
    mounted: set[Path] = set()

    def mount(path: Path) -> None:
        if path not in mounted:
            mounted.add(path)
            options.extend(["-v", f"{path}:{path}:ro"])

    for name, argument in (
        ("find-links", "PIP_FIND_LINKS"),
        ("index-url", "PIP_INDEX_URL"),
        ("extra-index-url", "PIP_EXTRA_INDEX_URL"),
    ):
        locations = config.get(name, "").split()
        for location in locations:
            path = _local(location)
            if path is not None:
                # an index's pages link to files beside its `simple` folder
                mount(path if name == "find-links" else path.parent)
        if locations:
            options.extend(["--build-arg", f"{argument}={' '.join(locations)}"])
    if config.get("find-links") and "extra-index-url" not in config:
        options.extend(["--build-arg", "PIP_EXTRA_INDEX_URL="])
    if "cert" in config:
        options.extend(["-v", f"{config['cert']}:/run/host-ca.crt:ro"])
        options.extend(["--build-arg", "PIP_CERT=/run/host-ca.crt"])
    cache = Path(
        subprocess.run(
            [sys.executable, "-m", "pip", "cache", "dir"], capture_output=True, text=True
        ).stdout.strip()
        or Path.home() / ".cache" / "pip"
    )
    cache.mkdir(parents=True, exist_ok=True)
    options.extend(["-v", f"{cache}:/run/pip-cache", "--build-arg", "PIP_CACHE_DIR=/run/pip-cache"])
    return options


def image_bytes(image: str) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", image).strip())


def wait_until_healthy(base_url: str, container: str, timeout: float = 900) -> float:
    """Seconds until `base_url`/health answers 200; fails at once if the container stops."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        state = podman("inspect", "--format", "{{.State.Status}}", container).strip()
        if state not in ("running", "created", "configured"):
            raise AssertionError(f"{container} is {state}:\n{podman('logs', container)[-4000:]}")
        try:
            if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"{container} not healthy in {timeout} s:\n{podman('logs', container)}")
