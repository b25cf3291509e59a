"""What every RoPE type served here is, written once: names, factors and the length it serves.

Plain data and arithmetic (no torch, no vLLM), so that the server, the vLLM hooks and the
transformers hooks all ask the same place. Type names are the ``rope_type`` values of
transformers 5 and vLLM; ``none`` is how a user asks for plain RoPE (``default`` in configs).
"""

from collections.abc import Mapping
from typing import Any

# rope_type of each Resonance type -> the scaling method whose frequencies it rounds.
RESONANCE_TYPES: dict[str, str] = {
    "resonance": "default",
    "resonance_yarn": "yarn",
    "resonance_linear": "linear",
    "resonance_dynamic": "dynamic",
    "resonance_ntk": "ntk",
    "resonance_llama3": "llama3",
}
# The methods vLLM implements itself that this project extends (and serves as they are).
BASE_TYPES = ("default", "linear", "dynamic", "ntk", "yarn", "llama3")
# What a user may ask for: "none" is plain RoPE.
SERVABLE_TYPES = ("none", *BASE_TYPES[1:], *RESONANCE_TYPES)
# Methods whose config max_position_embeddings already counts the extension (the HF and vLLM
# convention); for the others the served length is max_position_embeddings * factor.
EXTENDED_MAX_POSITION_METHODS = frozenset({"yarn", "llama3"})
# vLLM types that serve max_position_embeddings * factor from a cos/sin table of only
# max_position_embeddings rows (vLLM 0.32's fixed and dynamic NTK): a position past it reads
# beyond the table, so an override states the served length there. Fixed NTK does not depend on
# it; dynamic NTK then reads it as the length it is evaluated at, over max_trained_positions.
SHORT_TABLE_TYPES = frozenset({"ntk", "dynamic"})
# Keys that belong to one scaling method; switching methods drops them and keeps the rest
# (rope_theta, partial_rotary_factor, ...).
SCALING_KEYS = frozenset(
    {
        "factor",
        "original_max_position_embeddings",
        "beta_fast",
        "beta_slow",
        "truncate",
        "attention_factor",
        "mscale",
        "mscale_all_dim",
        "mixed_b",
        "max_trained_positions",
        "low_freq_factor",
        "high_freq_factor",
        "short_factor",
        "long_factor",
        "alpha",
    }
)
# Parameters a user sets by method (the rest of SCALING_KEYS come only from configs).
METHOD_PARAMETERS: dict[str, tuple[str, ...]] = {
    "yarn": ("beta_fast", "beta_slow"),
    "llama3": ("low_freq_factor", "high_freq_factor"),
}
DEFAULT_ROPE_THETA = 10000.0
# rope_parameters key of a per-request table (`rope_plugins.vllm_rotary`): the rows of the
# checkpoint's unscaled RoPE that follow the scaled table, the trained length.
UNSCALED_ROWS = "unscaled_rows"
# SamplingParams.extra_args key: what the model runner adds to a request's positions so that
# they read the unscaled rows (`rope_plugins.table_offsets`); absent, the scaled table.
TABLE_OFFSET = "resonance_table_offset"


def base_method(rope_type: str) -> str:
    """The scaling method a type computes before any rounding (``none`` -> ``default``)."""
    if rope_type == "none":
        return "default"
    return RESONANCE_TYPES.get(rope_type, rope_type)


def takes_factor(rope_type: str) -> bool:
    """Plain RoPE, rounded or not, extends nothing and takes no factor."""
    return base_method(rope_type) != "default"


def reads_extended_max_position(rope_type: str) -> bool:
    """Whether a config of this type states the extended length in max_position_embeddings."""
    return base_method(rope_type) in EXTENDED_MAX_POSITION_METHODS


def served_length(rope_type: str, factor: float, original: int) -> int:
    """Tokens served when a model trained on ``original`` tokens is scaled by ``factor``."""
    return int(original * factor) if takes_factor(rope_type) else original


def trained_length(params: Mapping[str, Any], max_position: int) -> int:
    """The context a checkpoint was trained on: what its RoPE scaling extends, if it has one."""
    return int(params.get("original_max_position_embeddings") or max_position)


def served_max_positions(params: Mapping[str, Any], max_position: int) -> int:
    """The length a config's RoPE serves, read as vLLM reads the method it extends.

    max_position_embeddings for plain RoPE; times the factor for linear, NTK and dynamic; for
    YaRN and llama3 configs, whose max_position_embeddings already counts the extension,
    original * factor when that is larger (vLLM's YaRN table has original * factor rows).
    """
    method = base_method(params["rope_type"])
    if method == "default":
        return max_position
    if method in EXTENDED_MAX_POSITION_METHODS:
        extended = int(params["original_max_position_embeddings"] * params["factor"])
        return max(max_position, extended)
    return int(max_position * params["factor"])


def config_max_position_embeddings(rope_type: str, factor: float, original: int) -> int:
    """max_position_embeddings that a config of this type must state to serve the extension."""
    if reads_extended_max_position(rope_type) or rope_type in SHORT_TABLE_TYPES:
        return served_length(rope_type, factor, original)
    return original


def scaled_rope_parameters(
    checkpoint: Mapping[str, Any], rope_type: str, factor: float | None, original: int, **extra
) -> dict[str, Any]:
    """A checkpoint's rope_parameters with another scaling method applied.

    Keys of the checkpoint's own scaling method are dropped; every other key is kept.
    ``extra`` may hold every method's parameters (beta_fast, low_freq_factor, ...); those of
    the chosen method are used.
    """
    kept = {k: v for k, v in checkpoint.items() if k not in SCALING_KEYS}
    params = {**kept, "rope_type": "default" if rope_type == "none" else rope_type}
    params["rope_theta"] = checkpoint.get("rope_theta") or DEFAULT_ROPE_THETA
    if takes_factor(rope_type):
        params |= {"factor": factor, "original_max_position_embeddings": original}
        if base_method(rope_type) == "dynamic":
            params["max_trained_positions"] = original
        wanted = METHOD_PARAMETERS.get(base_method(rope_type), ())
        params |= {k: v for k, v in extra.items() if k in wanted and v is not None}
    return params
