"""vLLM's async engine for one served model, started from an `EnginePlan`: the
`server.engine_client.EngineClient` the front end runs on."""

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from rope_plugins import engine_signals
from server.constraints import ConstraintCompiler
from server.metrics import Metrics
from server.plan import EnginePlan, describe

logger = logging.getLogger(__name__)
SHUTDOWN_GRACE_SECONDS = 3  # for the engine's processes to end when asked to


class Engine:
    """Starts vLLM's `AsyncLLM` as the plan says, and wraps what the front end calls."""

    def __init__(
        self,
        plan: EnginePlan,
        metrics: Metrics,
        constraint_timeout: float,
        eager_constraints: bool = True,
    ) -> None:
        """``eager_constraints``: start the constraint compiler (a process that imports vLLM)
        with the engine, so the first constrained request does not wait for it; otherwise it
        starts at the first constrained request."""
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        os.environ.update(plan.environment)
        os.environ[engine_signals.ENV] = str(os.getpid())  # the engine's own process group
        vllm_config = AsyncEngineArgs(**plan.engine_args).create_engine_config()
        model_config = vllm_config.model_config
        self.info = dataclasses.replace(plan.info, max_model_len=model_config.max_model_len)
        self.constraint_timeout = constraint_timeout
        self._metrics, self._progress_at = metrics, time.monotonic()
        self.constraints = ConstraintCompiler(vllm_config, constraint_timeout)
        if eager_constraints:  # started beside the engine, ready before the first request
            self.constraints.start()
        self.llm = AsyncLLM.from_vllm_config(vllm_config, stat_loggers=[metrics.stat_logger()])
        if eager_constraints:
            self.constraints.wait_ready()
        self.tokenizer = self.llm.get_tokenizer()
        lora = vllm_config.lora_config
        self.max_lora_rank = lora.max_lora_rank if lora is not None else None
        # The checkpoint's generation_config.json defaults, applied as vLLM's server does.
        self.default_sampling = model_config.get_diff_sampling_param()
        if plan.kv_cache_gib is not None:
            logger.info(
                "KV cache of the CPU build: %d GiB, %.1f sequences of %d tokens "
                "(--cpu-kv-cache-space-gib, --kv-cache-dtype %s)",
                plan.kv_cache_gib,
                plan.kv_sequences,
                self.info.max_model_len,
                plan.engine_args.get("kv_cache_dtype", "auto"),
            )
        logger.info("engine arguments: %s", describe(plan))

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

    def generate(
        self,
        token_ids: list[int],
        params: Any,
        request_id: str,
        lora: Any = None,
        cache_salt: str | None = None,
    ) -> AsyncIterator[Any]:
        prompt: dict[str, Any] = {"prompt_token_ids": token_ids}
        if cache_salt is not None:
            prompt["cache_salt"] = cache_salt
        return self.llm.generate(prompt, params, request_id, lora_request=lora)

    async def abort(self, request_ids: list[str]) -> None:
        await self.llm.abort(request_ids)

    async def check_health(self) -> None:
        await self.llm.check_health()

    async def add_lora(self, request: Any) -> None:
        await self.llm.add_lora(request)

    async def remove_lora(self, lora_int_id: int) -> None:
        await self.llm.remove_lora(lora_int_id)

    def unfinished_requests(self) -> int:
        return self.llm.get_num_unfinished_requests()

    def stalled_seconds(self) -> float:
        now = time.monotonic()
        if self.unfinished_requests() == 0:
            self._progress_at = now  # nothing to do is no stall
        else:  # every engine step reports statistics (`Metrics.stat_logger`)
            self._progress_at = max(self._progress_at, self._metrics.last_engine_step)
        return now - self._progress_at

    def shutdown(self) -> None:
        """Stop the engine now (the front end has drained what it will): vLLM's engine core
        would otherwise finish the requests it still holds first, and a worker blocked in a
        system call would outlive the server."""
        self.constraints.shutdown()
        self.llm.shutdown(timeout=SHUTDOWN_GRACE_SECONDS)
        _reap_children(SHUTDOWN_GRACE_SECONDS)


def _reap_children(grace: float) -> None:
    """Kill what of the engine is left after its shutdown: a worker blocked in a system call
    (reading a file that never ends) ignores vLLM's stop and would outlive the server."""
    import psutil

    children = psutil.Process().children(recursive=True)
    _, alive = psutil.wait_procs(children, timeout=grace)
    for process in alive:
        logger.warning("killing engine process %d, still alive after shutdown", process.pid)
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


def run_headless_workers(plan: EnginePlan) -> None:
    """This node's engine workers of a multi-node engine, as ``vllm serve --headless`` runs
    them on a node of rank > 0, until node 0 shuts them down or SIGTERM/SIGINT comes."""
    import signal

    from vllm import AsyncEngineArgs
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.executor.multiproc_executor import MultiprocExecutor

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    os.environ.update(plan.environment)
    config = AsyncEngineArgs(**plan.engine_args).create_engine_config(
        usage_context=UsageContext.OPENAI_API_SERVER, headless=True
    )
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    executor = MultiprocExecutor(config, monitor_workers=False)
    try:
        executor.start_worker_monitor(inline=True)
    finally:
        executor.shutdown()
