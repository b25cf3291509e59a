"""Checks of a Resonance ``rope_parameters`` dict, each failure one message naming the field."""

from collections.abc import Callable, Mapping
from typing import Any

from rope_plugins.catalog import RESONANCE_TYPES, UNSCALED_ROWS

# YaRN's defaults where rope_parameters leaves a field out (or sets it to null).
YARN_DEFAULTS: dict[str, Any] = {"beta_fast": 32, "beta_slow": 1, "truncate": True}


def with_yarn_defaults(params: Mapping[str, Any]) -> dict[str, Any]:
    return {**YARN_DEFAULTS, **{k: v for k, v in params.items() if v is not None}}


class RopeParameterError(ValueError):
    """A ``rope_parameters`` value that cannot be served."""


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(minimum: float, inclusive: bool = True) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        ok = _is_number(value) and (value >= minimum if inclusive else value > minimum)
        return None if ok else f"a number {'>=' if inclusive else '>'} {minimum:g}"

    return check


def _positive_int(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
    return None if ok else "a positive integer"


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "true or false"


def _any_number(value: Any) -> str | None:
    return None if _is_number(value) else "a number"


_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "rope_theta": _number(0, inclusive=False),
    "partial_rotary_factor": _number(0, inclusive=False),
    "factor": _number(1),
    "original_max_position_embeddings": _positive_int,
    "max_trained_positions": _positive_int,
    "beta_fast": _number(0, inclusive=False),
    "beta_slow": _number(0, inclusive=False),
    "truncate": _boolean,
    "attention_factor": _number(0, inclusive=False),
    "mscale": _any_number,
    "mscale_all_dim": _any_number,
    "mixed_b": _number(0, inclusive=False),
    "low_freq_factor": _number(0, inclusive=False),
    "high_freq_factor": _number(0, inclusive=False),
    UNSCALED_ROWS: _positive_int,
}

_REQUIRED: dict[str, tuple[str, ...]] = {
    "resonance": (),
    "resonance_yarn": ("factor", "original_max_position_embeddings"),
    "resonance_linear": ("factor",),
    "resonance_dynamic": ("factor",),
    "resonance_ntk": ("factor",),
    "resonance_llama3": (
        "factor",
        "original_max_position_embeddings",
        "low_freq_factor",
        "high_freq_factor",
    ),
}


def accepted_types() -> str:
    return ", ".join(RESONANCE_TYPES)


def validate_rope_parameters(params: Mapping[str, Any]) -> None:
    """Raise `RopeParameterError` on the first field a Resonance RoPE cannot use.

    Keys this plugin does not read are left alone, as transformers and vLLM do.
    """
    rope_type = params.get("rope_type")
    if rope_type not in RESONANCE_TYPES:
        raise RopeParameterError(
            f"rope_parameters.rope_type: unknown Resonance type {rope_type!r}; "
            f"accepted: {accepted_types()}"
        )
    for field in _REQUIRED[rope_type]:
        if params.get(field) is None:
            raise RopeParameterError(
                f"rope_parameters.{field} is required for rope_type {rope_type!r}"
            )
    for field, check in _CHECKS.items():
        value = params.get(field)
        if value is not None and (expected := check(value)):
            raise RopeParameterError(
                f"rope_parameters.{field} must be {expected} (got {value!r}) "
                f"for rope_type {rope_type!r}"
            )
    if rope_type == "resonance_yarn":
        _require_order(with_yarn_defaults(params), rope_type, "beta_fast", "beta_slow")
    if rope_type == "resonance_llama3":
        _require_order(params, rope_type, "high_freq_factor", "low_freq_factor")


def _require_order(params: Mapping[str, Any], rope_type: str, larger: str, smaller: str) -> None:
    big, small = params[larger], params[smaller]
    if big <= small:
        raise RopeParameterError(
            f"rope_parameters.{larger} must be greater than {smaller} "
            f"(got {larger}={big!r}, {smaller}={small!r}) for rope_type {rope_type!r}"
        )
