"""The seam between the HTTP front end and an engine: all the routes may ask of one.

`server.engine.Engine` implements it over vLLM's ``AsyncLLM``; the tests' fake engine
(`tests/fake_engine.py`) implements it in process, so that the whole HTTP surface (validation,
statuses, streams, admission, errors) is tested in seconds. What must apply to every request
(admission charge and release, metrics, deadlines, aborts) is done by `server.execution.Executor`
on its way to ``generate``, so every route inherits it. The shape follows vLLM's own
``EngineClient`` (``vllm/engine/protocol.py``), cut to what this server uses.
"""

from collections.abc import AsyncIterator
from typing import Any, Protocol

from vllm import RequestOutput, SamplingParams

from server.plan import ModelInfo
from server.vllm_compat import LoRARequest


class EngineClient(Protocol):
    info: ModelInfo  # the served model: name, context, RoPE settings
    tokenizer: Any  # a Hugging Face tokenizer of the served model
    default_sampling: dict[str, Any]  # the checkpoint's generation_config.json defaults
    max_lora_rank: int | None  # None: the engine serves no adapters
    constraint_timeout: float  # seconds a structured-output constraint may take to compile

    @property
    def alive(self) -> bool:
        """False once the engine has died (the server then exits to be restarted)."""
        ...

    def generate(
        self,
        token_ids: list[int],
        params: SamplingParams,
        request_id: str,
        lora: LoRARequest | None = None,
        cache_salt: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """The request's outputs as the engine produces them (``params.output_kind`` says
        whether each is a delta or the final one); aborted requests end with an abort.
        Requests share prefix-cache blocks only with requests of the same ``cache_salt``."""
        ...

    async def abort(self, request_ids: list[str]) -> None: ...

    async def check_health(self) -> None:
        """Raises if the engine cannot serve."""
        ...

    async def check_constraint(self, params: SamplingParams) -> None:
        """Raises ValueError (the client's constraint is bad) or TimeoutError (it compiles
        too slowly) before the request reaches the engine."""
        ...

    async def add_lora(self, request: LoRARequest) -> None: ...

    async def remove_lora(self, lora_int_id: int) -> None: ...

    def stalled_seconds(self) -> float:
        """How long the engine has held requests without finishing a step (0 while it has
        none): a wedged engine is seen by /health, a long prefill is not."""
        ...

    def unfinished_requests(self) -> int:
        """Requests the engine still holds (for the scheduler gauges)."""
        ...

    def shutdown(self) -> None: ...
