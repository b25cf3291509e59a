"""An in-process engine for tests of the HTTP surface (`server.engine_client.EngineClient`).

Deterministic: the tokens of a choice depend on the prompt, the choice's index and the step
only; every log-probability is ``-(step % 5) - 0.5`` (or `Faults.logprob`). A constraint
yields a fixed text that satisfies it (``{}`` for JSON, the first choice of a ``choice``).
`Faults` makes it fail as vLLM's engine does: dead, queue full, slow, stalled. It records every
request it was given, so tests can check what reached the engine. It is no model of vLLM: tests
of what vLLM computes run on the real engine (tests/engine, tests/slow).
"""

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from vllm import CompletionOutput, RequestOutput, SamplingParams
from vllm.exceptions import QueueOverflowError
from vllm.v1.engine.exceptions import EngineDeadError

from server.plan import STATIC, ModelInfo, RopePolicy
from server.vllm_compat import Logprob, LoRARequest, RequestOutputKind

FIRST_TOKEN = 3  # the tiny tokenizer's ids 0-2 are <unk>, <s>, </s>


@dataclass
class Faults:
    dead: bool = False  # the engine has died: generate raises, health fails
    queue_full: bool = False  # vLLM's own queue limit (max_num_queued_reqs) is reached
    step_seconds: float = 0.0  # time per output step
    stall: bool = False  # no output at all until the request is aborted
    logprob: float | None = None  # every log-probability, e.g. float("-inf")
    reply: str | None = None  # the text every unconstrained choice is (a model's tool call)
    stalled: float = 0.0  # seconds the engine has held requests without a step
    lora_load_seconds: float = 0.0  # how long an adapter takes to load


@dataclass
class Seen:
    """A request as it reached the engine."""

    token_ids: list[int]
    params: SamplingParams
    lora: LoRARequest | None
    cache_salt: str | None = None


@dataclass
class FakeEngine:
    tokenizer: Any
    info: ModelInfo
    max_lora_rank: int | None = None
    constraint_timeout: float = 5.0
    default_sampling: dict[str, Any] = field(default_factory=dict)
    faults: Faults = field(default_factory=Faults)
    seen: dict[str, Seen] = field(default_factory=dict)
    aborted: list[str] = field(default_factory=list)
    loras: dict[int, LoRARequest] = field(default_factory=dict)
    running: set[str] = field(default_factory=set)
    _abort_events: dict[str, asyncio.Event] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        tokenizer: Any,
        max_model_len: int,
        trained: int,
        rope_policy: RopePolicy = STATIC,
        **kwargs: Any,
    ) -> "FakeEngine":
        rope = {"rope_type": "resonance_yarn", "factor": max_model_len / trained}
        rope["original_max_position_embeddings"] = trained
        info = ModelInfo(
            "fake-model", "fake", "a fake engine", trained, max_model_len, rope, rope_policy
        )
        return cls(tokenizer, info, **kwargs)

    # ------------------------------------------------------------------ the seam
    @property
    def alive(self) -> bool:
        return not self.faults.dead

    async def check_health(self) -> None:
        if self.faults.dead:
            raise EngineDeadError()

    async def check_constraint(self, params: SamplingParams) -> None:
        constraint = params.structured_outputs
        if constraint is not None and constraint.regex == "(":
            raise ValueError("the regex does not compile")

    async def add_lora(self, request: LoRARequest) -> None:
        await asyncio.sleep(self.faults.lora_load_seconds)
        self.loras[request.lora_int_id] = request

    async def remove_lora(self, lora_int_id: int) -> None:
        self.loras.pop(lora_int_id, None)

    def unfinished_requests(self) -> int:
        return len(self.running)

    def stalled_seconds(self) -> float:
        return self.faults.stalled

    def shutdown(self) -> None:
        pass

    async def abort(self, request_ids: list[str]) -> None:
        for request_id in request_ids:
            self.aborted.append(request_id)
            if request_id in self._abort_events:
                self._abort_events[request_id].set()

    async def generate(
        self,
        token_ids: list[int],
        params: SamplingParams,
        request_id: str,
        lora: LoRARequest | None = None,
        cache_salt: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        if self.faults.dead:
            raise EngineDeadError()
        if self.faults.queue_full:
            raise QueueOverflowError()
        self.seen[request_id] = Seen(list(token_ids), params, lora, cache_salt)
        self.running.add(request_id)
        aborted = self._abort_events[request_id] = asyncio.Event()
        try:
            async for output in self._outputs(token_ids, params, request_id, aborted):
                yield output
        except (GeneratorExit, asyncio.CancelledError):  # the caller gave up: vLLM aborts
            self.aborted.append(request_id)
            raise
        finally:
            self.running.discard(request_id)
            del self._abort_events[request_id]

    # ------------------------------------------------------------------ outputs
    async def _outputs(
        self, prompt: list[int], params: SamplingParams, request_id: str, aborted: asyncio.Event
    ) -> AsyncIterator[RequestOutput]:
        choices = [self._tokens(prompt, params, j) for j in range(params.n)]
        delta = params.output_kind == RequestOutputKind.DELTA
        if self.faults.stall:
            await aborted.wait()
        for step in range(max(len(c) for c in choices)):
            if aborted.is_set():
                break
            if self.faults.step_seconds:
                await asyncio.sleep(self.faults.step_seconds)
            if self.faults.dead:  # died with the request in flight
                raise EngineDeadError()
            if delta:
                news = {
                    j: (c[step : step + 1], step) for j, c in enumerate(choices) if step < len(c)
                }
                finishes = {j: _finish(params, choices[j], step + 1) for j in news}
                yield self._output(prompt, params, request_id, news, finishes, first=step == 0)
        if aborted.is_set():
            news = {j: ([], 0) for j in range(params.n)}
            yield self._output(prompt, params, request_id, news, dict.fromkeys(news, "abort"))
        elif not delta:
            news = {j: (c, 0) for j, c in enumerate(choices)}
            finishes = {j: _finish(params, c, len(c)) for j, c in enumerate(choices)}
            yield self._output(prompt, params, request_id, news, finishes, first=True)

    def _tokens(self, prompt: list[int], params: SamplingParams, index: int) -> list[int]:
        constraint = params.structured_outputs
        if constraint is not None:
            text = constraint.choice[0] if constraint.choice else "{}"
            return self.tokenizer.encode(text, add_special_tokens=False)[: params.max_tokens]
        if self.faults.reply is not None:
            reply = self.tokenizer.encode(self.faults.reply, add_special_tokens=False)
            return reply[: params.max_tokens]
        span = len(self.tokenizer) - FIRST_TOKEN
        start = sum(prompt) + 31 * index
        return [FIRST_TOKEN + (start + 7 * k) % span for k in range(params.max_tokens)]

    def _logprob(self, step: int) -> float:
        return self.faults.logprob if self.faults.logprob is not None else -(step % 5) - 0.5

    def _step_logprobs(self, token: int, step: int, k: int) -> dict[int, Logprob]:
        """The sampled token at rank 1, then k others below it."""
        entries = {token: Logprob(self._logprob(step), 1, self.tokenizer.decode([token]))}
        other = FIRST_TOKEN
        while len(entries) < k + 1:
            if other not in entries:
                rank = len(entries) + 1
                decoded = self.tokenizer.decode([other])
                entries[other] = Logprob(self._logprob(step) - rank, rank, decoded)
            other += 1
        return entries

    def _output(
        self,
        prompt: list[int],
        params: SamplingParams,
        request_id: str,
        news: dict[int, tuple[list[int], int]],  # choice -> (its new tokens, their first step)
        finishes: dict[int, str | None],
        first: bool = False,
    ) -> RequestOutput:
        outputs = []
        for j, (ids, first_step) in news.items():
            logprobs = None
            if params.logprobs is not None:
                logprobs = [
                    self._step_logprobs(t, first_step + i, params.logprobs)
                    for i, t in enumerate(ids)
                ]
            text = self.tokenizer.decode(ids, skip_special_tokens=params.skip_special_tokens)
            outputs.append(
                CompletionOutput(j, text, ids, None, logprobs, finish_reason=finishes[j])
            )
        prompt_logprobs = None
        if params.prompt_logprobs is not None and first:
            k = params.prompt_logprobs
            prompt_logprobs = [None] + [
                self._step_logprobs(t, i, k) for i, t in enumerate(prompt[1:], start=1)
            ]
        finished = all(f is not None for f in finishes.values())
        return RequestOutput(
            request_id, None, prompt, prompt_logprobs, outputs, finished, num_cached_tokens=0
        )


def _finish(params: SamplingParams, tokens: list[int], produced: int) -> str | None:
    if produced < len(tokens):
        return None
    return "length" if len(tokens) >= params.max_tokens else "stop"
