"""Where the Resonance types enter vLLM: `get_rope` and the max_model_len derivation.

vLLM dispatches RoPE types in `get_rope` with no registry, and derives the served context
length from a fixed list of types. Both are wrapped, once per process, so that Resonance types
build a `ResonanceRotaryEmbedding` and serve the length of the types they extend; every other type
goes to vLLM untouched.
"""

import functools
import inspect
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch

from rope_plugins.catalog import RESONANCE_TYPES, served_max_positions
from rope_plugins.validation import validate_rope_parameters

_WRAPPED = "__resonance_wrapped__"
# The parameters of vLLM's get_rope this wrapper reads, checked once at install.
_NEEDED = ("head_size", "max_position", "is_neox_style", "rope_parameters", "dtype")


def _check_signature(signature: inspect.Signature) -> int:
    """The position of ``rope_parameters``; a clear error if vLLM's get_rope changed."""
    names = list(signature.parameters)
    missing = [name for name in _NEEDED if name not in names]
    if missing:
        import vllm

        raise RuntimeError(
            f"resonance rope plugin: vLLM {vllm.__version__} get_rope has no parameter(s) "
            f"{', '.join(missing)}; this plugin supports vLLM 0.32"
        )
    return names.index("rope_parameters")


def _wrap_get_rope(original: Callable[..., Any]) -> Callable[..., Any]:
    from rope_plugins.vllm_rotary import ResonanceRotaryEmbedding

    signature = inspect.signature(original)
    params_index = _check_signature(signature)
    cache: dict[tuple[Any, ...], ResonanceRotaryEmbedding] = {}

    def resonance_type(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        if "rope_parameters" in kwargs:
            params = kwargs["rope_parameters"]
        else:
            params = args[params_index] if len(args) > params_index else None
        return isinstance(params, dict) and params.get("rope_type") in RESONANCE_TYPES

    @functools.wraps(original)
    def get_rope(*args: Any, **kwargs: Any) -> Any:
        if not resonance_type(args, kwargs):  # every other call reaches vLLM untouched
            return original(*args, **kwargs)
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        params = a["rope_parameters"]
        if a.get("dual_chunk_attention_config") is not None or "mrope_section" in params:
            raise ValueError(
                f"rope_type {params['rope_type']!r} supports plain (1-D) RoPE only, "
                "not dual-chunk attention or M-RoPE"
            )
        head_size = a["head_size"]
        rotary_dim = params.get("rope_dim") or int(
            head_size * params.get("partial_rotary_factor", 1.0)
        )
        dtype = a["dtype"] or torch.get_default_dtype()
        frozen = tuple(
            sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in params.items())
        )
        key = (head_size, rotary_dim, a["max_position"], a["is_neox_style"], frozen, dtype)
        if key not in cache:
            cache[key] = ResonanceRotaryEmbedding(
                head_size, rotary_dim, a["max_position"], a["is_neox_style"], dtype, params
            )
        return cache[key]

    setattr(get_rope, _WRAPPED, True)
    return get_rope


def _as_served_length(
    original: Callable[..., Iterator[dict[str, Any]]],
) -> Callable[..., Iterator[dict[str, Any]]]:
    """Show vLLM's max_model_len derivation each Resonance type as a plain factor.

    vLLM multiplies max_position_embeddings by ``factor`` for the types it does not list as
    already extended; a Resonance type is shown as that factor: served length / max positions.
    """

    @functools.wraps(original)
    def iter_rope_parameters(config: Any) -> Iterator[dict[str, Any]]:
        for params in original(config):
            # Every name in our family, so that a misspelt one fails here with the accepted list.
            if not str(params.get("rope_type")).startswith("resonance"):
                yield params
                continue
            validate_rope_parameters(params)
            max_position = config.max_position_embeddings
            served = served_max_positions(params, max_position)
            yield {"rope_type": params["rope_type"], "factor": served / max_position}

    setattr(iter_rope_parameters, _WRAPPED, True)
    return iter_rope_parameters


def install() -> None:
    """Wrap vLLM's `get_rope` (everywhere it was imported), its max-length derivation and its
    model runner's positions (`rope_plugins.table_offsets`)."""
    import vllm.config.model as model_config
    import vllm.model_executor.layers.rotary_embedding as rotary

    from rope_plugins import table_offsets

    if not getattr(rotary.get_rope, _WRAPPED, False):
        original = rotary.get_rope
        wrapped = _wrap_get_rope(original)
        for name, module in list(sys.modules.items()):
            # vars(), not getattr: lazy modules would import on attribute access.
            if name.startswith("vllm") and vars(module).get("get_rope") is original:
                module.get_rope = wrapped
    if not getattr(model_config.iter_rope_parameters, _WRAPPED, False):
        model_config.iter_rope_parameters = _as_served_length(model_config.iter_rope_parameters)
    table_offsets.install()
