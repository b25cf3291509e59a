"""vLLM's async engine for one served model, and what the front end needs to know of it."""

import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from server.metrics import Metrics
from server.settings import Settings, rope_override
from server.tiny_checkpoint import DEMO_NAME, demo_checkpoint

logger = logging.getLogger(__name__)
DEMO_CPU_KV_CACHE_GIB = 2.0


@dataclass(frozen=True)
class ModelInfo:
    name: str
    checkpoint: str
    max_model_len: int
    rope: dict[str, Any]  # the effective rope_parameters of the served model


def _checkpoint_rope(model: str) -> tuple[dict[str, Any], int]:
    """The checkpoint's own rope_parameters and max_position_embeddings."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model)
    rope = dict(getattr(config, "rope_parameters", None) or {})
    return rope, int(config.max_position_embeddings)


def engine_args(settings: Settings, model: str) -> Any:
    """vLLM's engine arguments for these settings (raises ValueError on a bad combination)."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    override = rope_override(settings, *_checkpoint_rope(model))
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
        model=model,
        served_model_name=settings.served_model_name or (DEMO_NAME if settings.is_demo else None),
        dtype="float32" if settings.is_demo and settings.dtype == "auto" else settings.dtype,
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


class Engine:
    """One `AsyncLLM` and the facts about its model that requests are checked against."""

    def __init__(self, settings: Settings) -> None:
        from vllm.v1.engine.async_llm import AsyncLLM

        import rope_plugins

        rope_plugins.register()
        kv_cache_gib = settings.cpu_kv_cache_space_gib
        if kv_cache_gib is None and settings.is_demo and "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
            kv_cache_gib = DEMO_CPU_KV_CACHE_GIB  # not vLLM's default of 90% of the machine
        if kv_cache_gib is not None:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = f"{kv_cache_gib:g}"
        model = str(demo_checkpoint(settings.cache_dir)) if settings.is_demo else settings.model
        vllm_config = engine_args(settings, model).create_engine_config()
        model_config = vllm_config.model_config
        self.info = ModelInfo(
            name=model_config.served_model_name,
            checkpoint=model,
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
        # The checkpoint's generation_config.json defaults, applied as vLLM's server does.
        self.default_sampling = model_config.get_diff_sampling_param()
        logger.info(
            "serving %s (%s), max_model_len %d, rope %s",
            self.info.name,
            self.info.checkpoint,
            self.info.max_model_len,
            self.info.rope,
        )

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
        self.llm.shutdown()
