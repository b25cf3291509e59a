"""Settings and the checkpoint's config -> everything the engine is started with.

One pure step, testable without an engine: the RoPE override, vLLM's engine arguments (the
server's own and the user's pass-through ones, checked against vLLM's ``AsyncEngineArgs``),
the environment, the served context, the CPU build's KV-cache size, the LoRA adapters and
every limit that can be checked before the engine starts. `server.engine` only executes it.
`make_plan`, at the end, is its one impure door: it resolves the model and reads the machine.
"""

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from rope_plugins import catalog, validate_rope_parameters
from server.model_source import ModelSource, resolve_model
from server.settings import ENGINE_FIELDS, Settings

# The CPU build's KV cache, when not set: room for this many sequences at the served length
# (or --max-num-seqs), within this share of the machine's memory and at least 1 GiB.
KV_CACHE_SEQUENCES, KV_CACHE_MEMORY_SHARE = 8, 0.25
# vLLM turns engine outputs into request outputs on the front end's event loop and yields
# between slices of this many sequences: with many log-probabilities per token a slice of 128
# holds the loop (and /health) for a second; one at a time keeps it free.
OUTPUT_SLICE_SEQUENCES = 1
QUEUED_CONTEXTS = 16  # --max-queued-tokens default: this many full contexts in flight
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "half": 2, "float": 4}
# Engine arguments the server sets itself, and the flag that sets each.
DERIVED = {
    "model": "--model",
    "served_model_name": "--served-model-name",
    "max_model_len": "--max-model-len",
    "hf_overrides": "--rope-type, --rope-factor and --original-max-position-embeddings",
    "rope_scaling": "--rope-type and --rope-factor",
    "rope_theta": "the checkpoint's config (rope_parameters.rope_theta)",
    "enable_lora": "--lora-module or --allow-runtime-lora",
    "enable_log_requests": "--log-level",
    "dtype": "--dtype",
    **{name: "--" + name.replace("_", "-") for name in ENGINE_FIELDS},
}


@dataclass(frozen=True)
class RopeOverride:
    """What the settings change in an unmodified checkpoint's config, and the context served."""

    rope_parameters: dict[str, Any]
    max_position_embeddings: int
    max_model_len: int


@dataclass(frozen=True)
class RopePolicy:
    """Which table serves a request: per-request (`server.rope_tables`) or always the one."""

    name: str  # "per-request" or "static"
    reason: str  # why, for the start-up banner
    trained: int = 0  # per-request: requests of at most this many tokens run unscaled
    table_offset: int = 0  # per-request: where the unscaled rows start in the table

    @property
    def per_request(self) -> bool:
        return self.name == "per-request"


STATIC = RopePolicy("static", "one table for every request")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    checkpoint: str  # the folder or hub id vLLM loads (never shown to clients)
    origin: str  # where the model came from, for the start-up message
    trained_context: int  # positions the checkpoint was trained on
    max_model_len: int
    rope: dict[str, Any]  # the effective rope_parameters of the served model
    rope_policy: RopePolicy = STATIC


@dataclass(frozen=True)
class Platform:
    """What the plan needs to know of the machine."""

    cpu: bool
    memory_bytes: int
    environ: Mapping[str, str] = field(default_factory=dict)
    fp8_kv_cache: bool = True  # the CPU build's fp8 KV cache needs AVX-512 or AMX
    cores: tuple[int, ...] = ()  # CPU ids this process may use, one per physical core
    numa_nodes: int = 1  # NUMA nodes this process may use
    per_request_hook_error: str | None = None  # why vLLM's runner could not be hooked


@dataclass(frozen=True)
class EnginePlan:
    engine_args: dict[str, Any]  # AsyncEngineArgs(**engine_args)
    environment: dict[str, str]  # set in this process before the engine starts
    info: ModelInfo
    max_queued_tokens: int
    kv_cache_gib: int | None  # the CPU build's KV cache, None elsewhere
    kv_bytes_per_token: int
    lora_modules: dict[str, str]  # adapter name -> path, loaded at start

    @property
    def kv_sequences(self) -> float | None:
        """Sequences of the served length that the CPU build's KV cache holds."""
        if self.kv_cache_gib is None:
            return None
        return self.kv_cache_gib * 2**30 / (self.info.max_model_len * self.kv_bytes_per_token)


def checkpoint_rope(config: Any) -> tuple[dict[str, Any], int]:
    """The checkpoint's own rope_parameters and max_position_embeddings."""
    rope = dict(getattr(config, "rope_parameters", None) or {})
    return rope, int(config.max_position_embeddings)


def trained_context(config: Any) -> int:
    """The checkpoint's own context: what its RoPE scaling extends, if it has one."""
    return catalog.trained_length(*checkpoint_rope(config))


def rope_override(
    settings: Settings, checkpoint: dict[str, Any], checkpoint_max_positions: int
) -> RopeOverride | None:
    """None when the settings leave the checkpoint's own RoPE as it is.

    The checkpoint's other rope_parameters keys (partial_rotary_factor, ...) are kept.
    Raises ValueError (one line, naming the setting) on a combination that cannot be served.
    """
    rope_type = settings.effective_rope_type
    if rope_type is None:
        return None
    original = settings.original_max_position_embeddings or checkpoint_max_positions
    factor = settings.effective_factor or 1.0
    params = catalog.scaled_rope_parameters(
        checkpoint,
        rope_type,
        factor,
        original,
        beta_fast=settings.yarn_beta_fast,
        beta_slow=settings.yarn_beta_slow,
        low_freq_factor=settings.llama3_low_freq_factor,
        high_freq_factor=settings.llama3_high_freq_factor,
    )
    if rope_type in catalog.RESONANCE_TYPES:
        validate_rope_parameters(params)
    served = catalog.served_length(rope_type, factor, original)
    if settings.max_model_len is not None and settings.max_model_len > served:
        raise ValueError(
            f"max_model_len ({settings.max_model_len}) is longer than the served context "
            f"({served} tokens: rope_factor {factor:g} x original_max_position_embeddings "
            f"{original})"
        )
    return RopeOverride(
        rope_parameters=params,
        max_position_embeddings=catalog.config_max_position_embeddings(rope_type, factor, original),
        max_model_len=settings.max_model_len or served,
    )


def rope_policy(
    settings: Settings,
    override: RopeOverride | None,
    checkpoint: dict[str, Any],
    hook_error: str | None = None,
) -> RopePolicy:
    """Per-request where it is defined and wanted; static otherwise, saying why.

    Per-request needs a Resonance scaling that the settings put on a checkpoint with plain
    RoPE (its unscaled table is then the checkpoint's own); a checkpoint whose config carries
    a scaling was trained with it. Speculative decoding is refused: the drafter reads
    positions the offset would not reach.
    """
    asked = settings.rope_policy
    if asked == "static":
        return RopePolicy("static", "--rope-policy static")
    own = checkpoint.get("rope_type", "default")
    params = override.rope_parameters if override else {}
    rope_type = params.get("rope_type")
    if override is None:
        reason = (
            f"the checkpoint's config carries its RoPE ({own}): served as trained"
            if own != "default"
            else "nothing is scaled"
        )
    elif own != "default":
        reason = f"the checkpoint's config carries a {own} scaling: it was trained with it"
    elif rope_type not in catalog.RESONANCE_TYPES or not catalog.takes_factor(rope_type):
        reason = f"per-request tables are built for the scaled Resonance types, not {rope_type}"
    elif "speculative_config" in settings.engine_args:
        reason = "speculative decoding's drafter would read unshifted positions"
    elif hook_error is not None:
        reason = hook_error
    else:
        trained = int(params["original_max_position_embeddings"])
        served = catalog.served_max_positions(params, override.max_position_embeddings)
        if served <= trained:
            reason = "the scaling serves no position past the trained context"
        else:
            return RopePolicy(
                "per-request",
                f"unscaled up to the trained {trained} tokens, {rope_type} past them",
                trained=trained,
                table_offset=served,
            )
    if asked == "per-request":
        raise ValueError(f"rope_policy per-request: {reason}; use --rope-policy static")
    return RopePolicy("static", reason)


def kv_bytes_per_token(config: Any, dtype: str, kv_cache_dtype: str = "auto") -> int:
    """Keys and values of every layer for one token, in the KV cache's own dtype."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    if kv_cache_dtype.startswith("fp8"):
        element = 1
    else:
        if dtype == "auto":
            dtype = str(getattr(config, "dtype", None) or "bfloat16").removeprefix("torch.")
        element = _DTYPE_BYTES.get(dtype, 4)
    return 2 * config.num_hidden_layers * kv_heads * head_dim * element


def pass_through(settings: Settings) -> dict[str, Any]:
    """The user's ``--engine-arg`` keys, each one vLLM's and none that the server sets."""
    from server.vllm_compat import engine_arg_names

    known = engine_arg_names()
    for key in settings.engine_args:
        if key in DERIVED:
            raise ValueError(f"engine_args: {key!r} is set by the server; use {DERIVED[key]}")
        if key not in known:
            raise ValueError(f"engine_args: {key!r} is not an engine argument of vLLM")
    return dict(settings.engine_args)


def lora_modules(settings: Settings) -> dict[str, str]:
    modules = {}
    for entry in settings.lora_modules:
        name, sep, path = entry.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"lora_modules: {entry!r} is not NAME=PATH")
        if name in modules:
            raise ValueError(f"lora_modules: the name {name!r} is given twice")
        modules[name] = path
    return modules


def build_plan(
    settings: Settings, source: ModelSource, config: Any, platform: Platform
) -> EnginePlan:
    """Raises ValueError (one line, naming the setting) on anything that cannot be served."""
    rope, max_positions = checkpoint_rope(config)
    override = rope_override(settings, rope, max_positions)
    policy = rope_policy(settings, override, rope, platform.per_request_hook_error)
    if override is not None and policy.per_request:
        params = override.rope_parameters | {catalog.UNSCALED_ROWS: policy.trained}
        override = replace(override, rope_parameters=params)
    hf_overrides: dict[str, Any] = {}
    if override is not None:
        hf_overrides = {
            "rope_parameters": override.rope_parameters,
            "max_position_embeddings": override.max_position_embeddings,
        }
        served, effective_rope = override.max_model_len, override.rope_parameters
    else:
        effective_rope = rope or {"rope_type": "default"}
        served = catalog.served_max_positions(effective_rope, max_positions)
        if settings.max_model_len is not None and settings.max_model_len > served:
            raise ValueError(
                f"max_model_len ({settings.max_model_len}) is longer than the checkpoint's "
                f"context ({served} tokens); extend it with --rope-type and --rope-factor"
            )
        served = settings.max_model_len or served
    max_queued = settings.max_queued_tokens or QUEUED_CONTEXTS * served
    if max_queued < served:
        raise ValueError(
            f"max_queued_tokens ({max_queued}) must be at least the served context ({served} "
            "tokens), or a longest request could never be admitted"
        )
    adapters = lora_modules(settings)
    engine_args = {
        "model": source.path,
        "served_model_name": settings.served_model_name or source.name or source.path,
        "dtype": source.dtype,
        # Without an override vLLM derives the context from the checkpoint itself.
        "max_model_len": served if override or settings.max_model_len else None,
        "hf_overrides": hf_overrides,
        "enable_log_requests": False,
        "enable_lora": bool(adapters) or settings.allow_runtime_lora,
        **{
            name: getattr(settings, name)
            for name in ENGINE_FIELDS
            if getattr(settings, name) is not None
        },
        **pass_through(settings),
    }
    given = engine_args.get("structured_outputs_config") or {}
    if isinstance(given, dict) and settings.compact_json:  # the user's own keys win
        # vLLM takes the option with the xgrammar and guidance backends only (not "auto");
        # xgrammar is the one "auto" picks for every constraint the front end checks.
        compact = {"backend": "xgrammar", "disable_any_whitespace": True}
        engine_args["structured_outputs_config"] = compact | given
    per_token = kv_bytes_per_token(config, source.dtype, settings.kv_cache_dtype)
    environment = {"VLLM_V1_OUTPUT_PROC_CHUNK_SIZE": str(OUTPUT_SLICE_SEQUENCES)}
    environment = {k: v for k, v in environment.items() if k not in platform.environ}
    gib = None
    if platform.cpu and settings.kv_cache_dtype.startswith("fp8") and not platform.fp8_kv_cache:
        raise ValueError(
            f"kv_cache_dtype {settings.kv_cache_dtype}: vLLM's CPU build keeps an fp8 KV cache "
            "only on x86 with AVX-512 or AMX, which this CPU lacks"
        )
    if platform.cpu:
        gib = cpu_kv_cache_gib(settings, platform, per_token, served)
        environment["VLLM_CPU_KVCACHE_SPACE"] = str(gib)
    check_parallel(settings, platform)
    environment |= thread_binding(settings, platform)
    info = ModelInfo(
        name=engine_args["served_model_name"],
        checkpoint=source.path,
        origin=source.origin,
        trained_context=trained_context(config),
        max_model_len=served,
        rope=effective_rope,
        rope_policy=policy,
    )
    return EnginePlan(engine_args, environment, info, max_queued, gib, per_token, adapters)


def cpu_kv_cache_gib(settings: Settings, platform: Platform, per_token: int, served: int) -> int:
    """VLLM_CPU_KVCACHE_SPACE (GiB): as set, or sized for the served context.

    A cache that cannot hold one sequence of the served length is refused before the engine
    starts (vLLM would fail in its own process, with a traceback).
    """
    if settings.cpu_kv_cache_space_gib is not None:
        gib = math.ceil(settings.cpu_kv_cache_space_gib)
    elif "VLLM_CPU_KVCACHE_SPACE" in platform.environ:
        gib = int(platform.environ["VLLM_CPU_KVCACHE_SPACE"])
    else:
        sequences = settings.max_num_seqs or KV_CACHE_SEQUENCES
        needed = math.ceil(sequences * served * per_token / 2**30)
        cap = int(platform.memory_bytes * KV_CACHE_MEMORY_SHARE / 2**30)
        gib = max(1, min(needed, cap))
    one_sequence = served * per_token / 2**30
    if one_sequence > gib:
        raise ValueError(
            f"a KV cache of {gib} GiB cannot hold one sequence of the served {served} tokens "
            f"({one_sequence:.2f} GiB): raise --cpu-kv-cache-space-gib, lower --max-model-len "
            "or use --kv-cache-dtype fp8"
        )
    return gib


THREADS_BIND = "VLLM_CPU_OMP_THREADS_BIND"
# vLLM settings of the CPU build's thread binding: when the user has set one, theirs wins.
BINDING_VARIABLES = (THREADS_BIND, "VLLM_CPU_SIM_MULTI_NUMA")


def check_parallel(settings: Settings, platform: Platform) -> None:
    """Refuses, in one line, what vLLM's CPU build would fail at later, or with a traceback."""
    if not platform.cpu:
        return
    if settings.distributed_executor_backend == "ray":
        raise ValueError(
            "distributed_executor_backend ray: vLLM's CPU build does not support Ray; use mp "
            "(the default), across nodes with --nnodes, --node-rank and --master-addr"
        )
    if settings.pipeline_parallel_size > 1 and settings.enforce_eager:
        raise ValueError(
            "pipeline_parallel_size > 1 with enforce_eager fails at the first request on vLLM's "
            "CPU build (the later stages' buffers are made in a warm-up eager mode skips); "
            "drop --enforce-eager"
        )


def thread_binding(settings: Settings, platform: Platform) -> dict[str, str]:
    """VLLM_CPU_OMP_THREADS_BIND for the CPU build's ranks on this machine.

    One rank: every core. vLLM's ``auto`` keeps one core per rank for its scheduler process,
    which on a 2-core machine halves the cores a prefill runs on (docs/RESULTS.md section 14:
    every core prefills 2000 tokens in 0.53x the time). Several ranks: ``auto`` gives each a
    NUMA node of its own and fails at start on a machine with fewer nodes; then the cores are
    split into one contiguous, equal share per rank. A user's own binding always wins.
    """
    ranks = settings.tensor_parallel_size * settings.pipeline_parallel_size // settings.nnodes
    if not platform.cpu or not platform.cores:  # (cores unknown: vLLM decides)
        return {}
    if any(name in platform.environ for name in BINDING_VARIABLES):
        return {}
    if ranks > 1 and platform.numa_nodes >= ranks:
        return {}
    if len(platform.cores) < ranks:
        raise ValueError(
            f"{ranks} engine ranks on this machine (tensor x pipeline parallel per node) need "
            f"a core each; it allows {len(platform.cores)}"
        )
    share = len(platform.cores) // ranks
    lists = [platform.cores[rank * share : (rank + 1) * share] for rank in range(ranks)]
    return {THREADS_BIND: "|".join(",".join(map(str, cores)) for cores in lists)}


def describe(plan: EnginePlan) -> str:
    """The engine arguments, one line, for the start-up log."""
    return json.dumps({k: v for k, v in plan.engine_args.items() if k != "model"}, default=str)


# ---------------------------------------- what start-up reads of the machine and the model, once
def checkpoint_config(model: str) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model)


def make_plan(settings: Settings) -> EnginePlan:
    """Resolve (and if needed convert) the model, read its config, plan the engine."""
    import psutil

    import rope_plugins
    from server.vllm_compat import is_cpu_platform

    rope_plugins.register()
    from rope_plugins import table_offsets

    source = resolve_model(settings)
    cpu = is_cpu_platform()
    platform = Platform(
        cpu=cpu,
        memory_bytes=psutil.virtual_memory().total,
        environ=dict(os.environ),
        fp8_kv_cache=cpu_has_fp8_kv_cache(),
        per_request_hook_error=table_offsets.unavailable,
        **(cpu_topology() if cpu else {}),
    )
    return build_plan(settings, source, checkpoint_config(source.path), platform)


def cpu_topology() -> dict[str, Any]:
    """The cores (one logical CPU per physical core, as vLLM's auto binding picks them) and
    NUMA nodes this process may use, read with vLLM's own helpers."""
    from server.vllm_compat import visible_cpus

    cpus, nodes = visible_cpus()
    per_core: dict[int, int] = {}
    for cpu in cpus:
        per_core[cpu.physical_core] = max(cpu.id, per_core.get(cpu.physical_core, -1))
    return {"cores": tuple(sorted(per_core.values())), "numa_nodes": max(1, len(nodes))}


def cpu_has_fp8_kv_cache() -> bool:
    """What vLLM's CPU attention asks of the processor for an fp8 KV cache."""
    import torch

    return torch.cpu._is_avx512_supported() or torch.cpu._is_amx_tile_supported()
