"""`make test-deploy`: the CPU image built from the committed Dockerfile, once per session."""

import time

import pytest
from podman_cli import CPU_IMAGE, REPO, image_bytes, pip_build_options, pip_config, podman


@pytest.fixture(scope="session")
def cpu_image() -> str:
    started = time.monotonic()
    podman(
        "build",
        "--pull=never",
        "--file",
        "deploy/docker/Dockerfile.cpu",
        "--tag",
        CPU_IMAGE,
        *pip_build_options(pip_config()),
        str(REPO),
        timeout=3600,
    )
    print(
        f"\nbuilt {CPU_IMAGE} in {time.monotonic() - started:.0f} s: "
        f"{image_bytes(CPU_IMAGE) / 1e9:.2f} GB"
    )
    return CPU_IMAGE
