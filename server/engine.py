"""vLLM's async engine for one served model, and what the front end needs to know of it."""

import asyncio
import logging
import math
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import psutil

from server import engine_signals
from server.constraints import ConstraintCompiler
from server.demo import ModelSource, resolve_model
from server.metrics import Metrics
from server.settings import Settings, rope_override

logger = logging.getLogger(__name__)
# The CPU build's KV cache, when not set: room for this many sequences at the served length
# (or --max-num-seqs), within this share of the machine's memory and at least 1 GiB.
KV_CACHE_SEQUENCES, KV_CACHE_MEMORY_SHARE = 8, 0.25
OUTPUT_SLICE_SEQUENCES = 1
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class ModelInfo:
    name: str
    checkpoint: str  # the folder or hub id vLLM loaded (never shown to clients)
    origin: str  # where the model came from, for the start-up message
    trained_context: int  # positions the checkpoint was trained on
    max_model_len: int
    rope: dict[str, Any]  # the effective rope_parameters of the served model


def _checkpoint_config(model: str) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model)


def _checkpoint_rope(config: Any) -> tuple[dict[str, Any], int]:
    """The checkpoint's own rope_parameters and max_position_embeddings."""
    rope = dict(getattr(config, "rope_parameters", None) or {})
    return rope, int(config.max_position_embeddings)


def kv_bytes_per_token(config: Any, dtype: str) -> int:
    """Keys and values of every layer for one token."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    if dtype == "auto":
        dtype = str(getattr(config, "dtype", None) or "bfloat16").removeprefix("torch.")
    return 2 * config.num_hidden_layers * kv_heads * head_dim * _DTYPE_BYTES.get(dtype, 4)


def kv_cache_gib(settings: Settings, per_token: int, max_model_len: int) -> int:
    """A KV cache for the served context, not vLLM's CPU default of most of the machine."""
    sequences = settings.max_num_seqs or KV_CACHE_SEQUENCES
    needed = math.ceil(sequences * max_model_len * per_token / 2**30)
    cap = int(psutil.virtual_memory().total * KV_CACHE_MEMORY_SHARE / 2**30)
    return max(1, min(needed, cap))


def trained_context(config: Any) -> int:
    """The checkpoint's own context: what its RoPE scaling extends, if it has one."""
    rope, max_positions = _checkpoint_rope(config)
    return int(rope.get("original_max_position_embeddings") or max_positions)


def engine_args(settings: Settings, source: ModelSource, config: Any) -> Any:
    """vLLM's engine arguments for these settings (raises ValueError on a bad combination)."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    override = rope_override(settings, *_checkpoint_rope(config))
    overrides: dict[str, Any] = {}
    max_model_len = settings.max_model_len
    if override is not None:
        overrides = {
            "rope_parameters": override.rope_parameters,
            "max_position_embeddings": override.max_position_embeddings,
        }
        max_model_len = override.max_model_len
    optional = {
        "max_num_seqs": settings.max_num_seqs,
        "enable_chunked_prefill": settings.enable_chunked_prefill,
        "enable_prefix_caching": settings.enable_prefix_caching,
        "distributed_executor_backend": settings.distributed_executor_backend,
    }
    return AsyncEngineArgs(
        model=source.path,
        served_model_name=settings.served_model_name or source.name,
        dtype=served_dtype(settings),
        tensor_parallel_size=settings.tensor_parallel_size,
        pipeline_parallel_size=settings.pipeline_parallel_size,
        gpu_memory_utilization=settings.gpu_memory_utilization,
        max_model_len=max_model_len,
        hf_overrides=overrides,
        enforce_eager=settings.enforce_eager,
        seed=settings.seed,
        enable_log_requests=False,
        **{key: value for key, value in optional.items() if value is not None},
    )


def served_dtype(settings: Settings) -> str:
    return "float32" if settings.is_demo and settings.dtype == "auto" else settings.dtype


class Engine:
    """One `AsyncLLM` and the facts about its model that requests are checked against."""

    def __init__(self, settings: Settings) -> None:
        from vllm.v1.engine.async_llm import AsyncLLM

        import rope_plugins

        rope_plugins.register()
        source = resolve_model(settings)
        config = _checkpoint_config(source.path)
        args = engine_args(settings, source, config)
        self._size_cpu_kv_cache(settings, config, args)
        os.environ[engine_signals.ENV] = str(os.getpid())  # the engine's own process group
        # vLLM turns engine outputs into request outputs on the front end's event loop and
        # yields between slices of this many sequences: with many log-probabilities per token
        # a slice of 128 holds the loop (and /health) for a second; one at a time keeps it free.
        os.environ.setdefault("VLLM_V1_OUTPUT_PROC_CHUNK_SIZE", str(OUTPUT_SLICE_SEQUENCES))
        vllm_config = args.create_engine_config()
        model_config = vllm_config.model_config
        self.info = ModelInfo(
            name=model_config.served_model_name,
            checkpoint=source.path,
            origin=source.origin,
            trained_context=trained_context(config),
            max_model_len=model_config.max_model_len,
            rope=dict(getattr(model_config.hf_config, "rope_parameters", None) or {}),
        )
        self.metrics = Metrics(
            self.info.max_model_len,
            self.info.rope,
            unfinished_requests=lambda: self.llm.get_num_unfinished_requests(),
        )
        self.llm = AsyncLLM.from_vllm_config(vllm_config, stat_loggers=[self.metrics.stat_logger()])
        self.tokenizer = self.llm.get_tokenizer()
        self.constraints = ConstraintCompiler(vllm_config, settings.structured_output_timeout)
        self.constraints.start()
        # The checkpoint's generation_config.json defaults, applied as vLLM's server does.
        self.default_sampling = model_config.get_diff_sampling_param()
        logger.info(
            "serving %s (%s), max_model_len %d, rope %s",
            self.info.name,
            self.info.checkpoint,
            self.info.max_model_len,
            self.info.rope,
        )

    @staticmethod
    def _size_cpu_kv_cache(settings: Settings, config: Any, args: Any) -> None:
        """VLLM_CPU_KVCACHE_SPACE (GiB, read by the CPU build only): as set, or sized here.

        A cache that cannot hold one sequence of the served length is refused before the
        engine starts (vLLM would fail in its own process, with a traceback).
        """
        from vllm.platforms import current_platform

        if not current_platform.is_cpu():
            return
        served = args.max_model_len or int(config.max_position_embeddings)
        per_token = kv_bytes_per_token(config, served_dtype(settings))
        if settings.cpu_kv_cache_space_gib is not None:
            gib = math.ceil(settings.cpu_kv_cache_space_gib)
        elif "VLLM_CPU_KVCACHE_SPACE" in os.environ:
            gib = int(os.environ["VLLM_CPU_KVCACHE_SPACE"])
        else:
            gib = kv_cache_gib(settings, per_token, served)
        one_sequence = served * per_token / 2**30
        if one_sequence > gib:
            raise ValueError(
                f"a KV cache of {gib} GiB cannot hold one sequence of the served "
                f"{served} tokens ({one_sequence:.2f} GiB): raise --cpu-kv-cache-space-gib "
                "or lower --max-model-len"
            )
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(gib)
        logger.info("KV cache of the CPU build: %d GiB (--cpu-kv-cache-space-gib)", gib)

    async def check_constraint(self, params: Any) -> None:
        """vLLM's own checks of a request's structured-output constraint, off the event loop,
        then its compilation within the time limit (`server.constraints`)."""
        config = self.llm.vllm_config
        trial = params.clone()
        await asyncio.wait_for(
            asyncio.to_thread(
                trial.verify,
                config.model_config,
                config.speculative_config,
                config.structured_outputs_config,
                self.tokenizer,
            ),
            self.constraints.timeout,
        )
        if trial.structured_outputs._backend == "xgrammar":
            await self.constraints.check(trial.structured_outputs)

    @property
    def alive(self) -> bool:
        return not self.llm.errored

    def generate(self, token_ids: list[int], params: Any, request_id: str) -> AsyncIterator[Any]:
        return self.llm.generate({"prompt_token_ids": token_ids}, params, request_id)

    async def abort(self, request_ids: list[str]) -> None:
        await self.llm.abort(request_ids)

    async def check_health(self) -> None:
        await self.llm.check_health()

    def shutdown(self) -> None:
        self.constraints.shutdown()
        self.llm.shutdown()
