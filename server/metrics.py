"""Prometheus metrics of the server, with names dashboards can rely on.

Latencies and token counts come from the statistics vLLM's engine already computes for every
step (a stat logger it calls): the front end counts no tokens of its own for them. vLLM's own
``vllm:*`` metrics live in Prometheus's default registry, which the server passes, and are exported
beside these; tests give each app a registry of its own.
"""

import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import prometheus_client
from prometheus_client import REGISTRY, CollectorRegistry

from server.vllm_compat import SchedulerStats, StatLoggerBase

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
    160.0,
    320.0,
    640.0,
)


def token_buckets(max_tokens: int) -> list[int]:
    """1, 2, 5, 10, 20, 50, ... up to and including the longest context served."""
    buckets, scale = [], 1
    while scale < max_tokens:
        buckets += [b * scale for b in (1, 2, 5) if b * scale < max_tokens]
        scale *= 10
    return [*buckets, max_tokens]


class Metrics:
    """Every metric of the server, made once per process when the served context is known.

    Routes, admission and the engine report into it; nothing else creates a metric.
    """

    def __init__(self, max_model_len: int, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        counter = partial(prometheus_client.Counter, registry=registry)
        gauge = partial(prometheus_client.Gauge, registry=registry)
        histogram = partial(prometheus_client.Histogram, registry=registry)
        self.requests = counter(
            "resonance_requests",
            "HTTP requests by endpoint (route path, or 'other') and status",
            ["endpoint", "status"],
        )
        self.model_requests = counter(
            "resonance_model_requests",
            "Generation requests by the model they named (the base model or a LoRA adapter)",
            ["model"],
        )
        self.time_to_first_token = histogram(
            "resonance_time_to_first_token_seconds",
            "Time from arrival to the first output token",
            buckets=LATENCY_BUCKETS,
        )
        self.inter_token_latency = histogram(
            "resonance_inter_token_latency_seconds",
            "Time between consecutive output tokens",
            buckets=LATENCY_BUCKETS,
        )
        self.e2e_latency = histogram(
            "resonance_e2e_request_latency_seconds",
            "Time from arrival to the last output token",
            buckets=LATENCY_BUCKETS,
        )
        tokens = token_buckets(max_model_len)
        self.prompt_tokens = histogram(
            "resonance_request_prompt_tokens", "Prompt length of finished requests", buckets=tokens
        )
        self.generation_tokens = histogram(
            "resonance_request_generation_tokens",
            "Output length of finished requests",
            buckets=tokens,
        )
        self.engine_requests = counter(
            "resonance_engine_requests",
            "Engine requests (one per prompt, and one more for a request that outgrew the "
            "unscaled RoPE table) by the table that served them: unscaled or scaled",
            ["table"],
        )
        self.table_prompt_tokens = counter(
            "resonance_table_prompt_tokens",
            "Prompt tokens of finished engine requests, by RoPE table",
            ["table"],
        )
        self.table_cached_tokens = counter(
            "resonance_table_prompt_tokens_cached",
            "Prompt tokens of finished engine requests served from the prefix cache, by RoPE "
            "table (each table's blocks are its own)",
            ["table"],
        )
        self.cached_prompt_tokens = counter(
            "resonance_prompt_tokens_cached",
            "Prompt tokens of finished requests served from the prefix cache",
        )
        # The engine reports these each step; once it holds no request it reports nothing more,
        # so at scrape time an idle engine reads 0 rather than its last busy step.
        self.scheduler = SchedulerStats()
        self._unfinished: Callable[[], int] = lambda: 0
        self.last_engine_step = time.monotonic()  # when the engine last reported a step
        scheduler_gauges: list[tuple[str, str, Callable[[SchedulerStats], float]]] = [
            (
                "resonance_num_requests_running",
                "Requests the engine is running",
                lambda s: s.num_running_reqs,
            ),
            (
                "resonance_num_requests_waiting",
                "Requests waiting to be scheduled",
                lambda s: s.num_waiting_reqs + s.num_skipped_waiting_reqs,
            ),
            (
                "resonance_kv_cache_usage_ratio",
                "KV-cache blocks in use (0-1)",
                lambda s: s.kv_cache_usage,
            ),
        ]
        for name, help_text, read in scheduler_gauges:
            live = gauge(name, help_text)
            live.set_function(lambda read=read: read(self.scheduler) if self._unfinished() else 0)
        self._rope_info = gauge(
            "resonance_rope_info",
            "RoPE settings of the served model (value 1)",
            ["rope_type", "factor", "original_max_position_embeddings", "max_model_len"],
        )
        self._admitted = gauge(
            "resonance_admitted",
            "Admitted and not yet finished: requests, engine sequences, tokens",
            ["resource"],
        )

    def describe_model(self, max_model_len: int, rope: Mapping[str, Any]) -> None:
        self._rope_info.labels(
            rope_type=str(rope.get("rope_type", "default")),
            factor=str(rope.get("factor", 1.0)),
            original_max_position_embeddings=str(rope.get("original_max_position_embeddings", "")),
            max_model_len=str(max_model_len),
        ).set(1)

    def watch_engine(self, unfinished_requests: Callable[[], int]) -> None:
        """``unfinished_requests`` counts the requests the engine still holds."""
        self._unfinished = unfinished_requests

    def watch_admission(self, admission: Any) -> None:
        """What is admitted now, against each limit."""
        for resource in ("requests", "sequences", "tokens"):
            self._admitted.labels(resource=resource).set_function(
                lambda resource=resource: getattr(admission, resource)
            )

    def stat_logger(self) -> type[StatLoggerBase]:
        """A vLLM stat-logger class that records into these metrics."""
        metrics = self

        class EngineStatLogger(StatLoggerBase):
            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                pass

            def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx=0):
                metrics.last_engine_step = time.monotonic()
                if scheduler_stats is not None:
                    metrics.scheduler = scheduler_stats
                if iteration_stats is None:
                    return
                for seconds in iteration_stats.time_to_first_tokens_iter:
                    metrics.time_to_first_token.observe(seconds)
                for seconds in iteration_stats.inter_token_latencies_iter:
                    metrics.inter_token_latency.observe(seconds)
                for finished in iteration_stats.finished_requests:
                    metrics.e2e_latency.observe(finished.e2e_latency)
                    metrics.prompt_tokens.observe(finished.num_prompt_tokens)
                    metrics.generation_tokens.observe(finished.num_generation_tokens)
                    metrics.cached_prompt_tokens.inc(finished.num_cached_tokens)

            def log_engine_initialized(self) -> None:
                pass

        return EngineStatLogger
