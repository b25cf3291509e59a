"""Resonance RoPE (arXiv 2403.00071) for vLLM and Hugging Face transformers.

`register` is the ``vllm.general_plugins`` entry point; vLLM calls it in every process, possibly
more than once, and every call after the first changes nothing. The math lives in
`rope_plugins.frequencies` and `rope_plugins.resonance` and needs neither library.
"""

from rope_plugins.catalog import RESONANCE_TYPES
from rope_plugins.validation import RopeParameterError, validate_rope_parameters

__all__ = ["RESONANCE_TYPES", "RopeParameterError", "register", "validate_rope_parameters"]


def register() -> None:
    from rope_plugins import transformers_hooks, vllm_hooks

    transformers_hooks.install()
    vllm_hooks.install()
