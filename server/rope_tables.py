"""Which RoPE table serves each engine request, chosen once at admission, and the switch of a
request that outgrows the unscaled table.

Under the per-request policy (`server.plan.RopePolicy`) a request whose prompt plus most
output fits the trained length L runs on the checkpoint's unscaled RoPE: its engine request
carries the table offset in ``SamplingParams.extra_args``, which the model runner adds to its
positions (`rope_plugins.table_offsets`), and a ``cache_salt`` of its own, so that its KV
blocks are never shared with a scaled request's. Any other request runs on the scaled table,
exactly as under the static policy.

A request that may outgrow L (a chat request without ``max_tokens`` asks for the rest of the
context) starts unscaled with at most L tokens in all; if it reaches L it is re-submitted
scaled, prompt plus the output so far as its prompt (one re-prefill of L tokens), and the
response goes on from there. The tokens after the switch are then exactly those a scaled
request given that prefix produces. Only requests that such a continuation reproduces
exactly switch: one sequence (n = 1), no constraint (a grammar's state would restart), no
stop strings or bad words (one could straddle the switch), no presence or frequency penalty
(they count output tokens only); others run scaled from the start.
"""

import copy
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from vllm import CompletionOutput, RequestOutput, SamplingParams

from rope_plugins.catalog import TABLE_OFFSET
from server.engine_client import EngineClient
from server.metrics import Metrics
from server.plan import RopePolicy
from server.vllm_compat import LoRARequest, RequestOutputKind

UNSCALED, SCALED = "unscaled", "scaled"
HEADER = "x-rope-table"
# The prefix cache of unscaled requests is kept apart from the scaled requests' by this salt.
UNSCALED_SALT = "resonance-rope-unscaled"
CONTINUATION = "-scaled"  # engine request id suffix of a request's scaled continuation


@dataclass(frozen=True)
class Route:
    """The table an engine request starts on, and after how many output tokens it goes on
    scaled (None: never)."""

    table: str
    switch_after: int | None = None

    @property
    def label(self) -> str:
        return f"{UNSCALED}-then-{SCALED}" if self.switch_after is not None else self.table


def static_table(rope: dict) -> str:
    """What the static policy's one table is called: unscaled for plain RoPE."""
    return UNSCALED if rope.get("rope_type", "default") == "default" else SCALED


def continuable(params: SamplingParams) -> bool:
    """Whether a scaled continuation gives exactly what one sequence would (module doc)."""
    return (
        params.n == 1
        and params.structured_outputs is None
        and not params.stop
        and not params.bad_words
        and not params.presence_penalty
        and not params.frequency_penalty
    )


class RopeTables:
    def __init__(self, policy: RopePolicy, static_table: str, metrics: Metrics) -> None:
        """``static_table``: what the static policy's one table is called in headers and
        metrics (``unscaled`` for a model served as its checkpoint has it)."""
        self.policy, self.static_table, self.metrics = policy, static_table, metrics

    def route(self, prompt_tokens: int, params: SamplingParams) -> Route:
        if not self.policy.per_request:
            return Route(self.static_table)
        trained = self.policy.trained
        if prompt_tokens + params.max_tokens <= trained:
            return Route(UNSCALED)
        if prompt_tokens < trained and continuable(params):
            return Route(UNSCALED, switch_after=trained - prompt_tokens)
        return Route(SCALED)

    async def generate(
        self,
        engine: EngineClient,
        route: Route,
        token_ids: list[int],
        params: SamplingParams,
        request_id: str,
        lora: LoRARequest | None,
    ) -> AsyncIterator[RequestOutput]:
        """The engine request's outputs on its route's table(s), as one request's."""
        if route.table == SCALED or not self.policy.per_request:
            run = engine.generate(token_ids, params, request_id, lora)
            async for output in self._counted(run, route.table, len(token_ids)):
                yield output
            return
        unscaled = params.clone()
        unscaled.extra_args = {**(params.extra_args or {}), TABLE_OFFSET: self.policy.table_offset}
        if route.switch_after is not None:
            unscaled.max_tokens = route.switch_after
            unscaled.min_tokens = min(params.min_tokens, route.switch_after)
        run = engine.generate(token_ids, unscaled, request_id, lora, cache_salt=UNSCALED_SALT)
        delta = params.output_kind == RequestOutputKind.DELTA
        generated: list[int] = []
        reached = None  # the unscaled part's last output, when it stopped at the trained length
        async for output in self._counted(run, UNSCALED, len(token_ids)):
            completion = output.outputs[0]
            if delta:
                generated.extend(completion.token_ids)
            if route.switch_after is None or not _reached(output):
                yield output
                continue
            reached = output
            if delta:  # what it produced goes out now; the response is not finished
                held = copy.copy(output)
                held.finished = False
                held.outputs = [replace(completion, finish_reason=None, stop_reason=None)]
                yield held
            else:
                generated = list(completion.token_ids)
        if reached is not None:  # (after the unscaled part's stream has ended in the engine)
            async for joined in self._continue(engine, reached, token_ids, generated, params, lora):
                yield joined

    async def _continue(
        self,
        engine: EngineClient,
        first: RequestOutput,
        token_ids: list[int],
        generated: list[int],
        params: SamplingParams,
        lora: LoRARequest | None,
    ) -> AsyncIterator[RequestOutput]:
        scaled = params.clone()
        scaled.max_tokens = params.max_tokens - len(generated)
        scaled.min_tokens = max(0, params.min_tokens - len(generated))
        scaled.prompt_logprobs = None  # the first part gave the prompt's
        prefix = token_ids + generated
        run = engine.generate(prefix, scaled, first.request_id + CONTINUATION, lora)
        delta = params.output_kind == RequestOutputKind.DELTA
        async for output in self._counted(run, SCALED, len(prefix)):
            yield _joined(first, output, delta)

    async def _counted(
        self, run: AsyncIterator[RequestOutput], table: str, prompt_tokens: int
    ) -> AsyncIterator[RequestOutput]:
        self.metrics.engine_requests.labels(table=table).inc()
        async for output in run:
            if output.finished:
                self.metrics.table_prompt_tokens.labels(table=table).inc(prompt_tokens)
                cached = output.num_cached_tokens or 0
                self.metrics.table_cached_tokens.labels(table=table).inc(cached)
            yield output


def _reached(output: RequestOutput) -> bool:
    """The unscaled part stopped at its limit (the trained length), not for its own reasons:
    its limit is below the request's, so "length" can only mean the trained length."""
    return output.finished and output.outputs[0].finish_reason == "length"


def _joined(first: RequestOutput, output: RequestOutput, delta: bool) -> RequestOutput:
    """An output of the continuation as the original request's: its prompt, its id, and (when
    outputs are whole, not deltas) everything the first part produced before it."""
    joined = copy.copy(output)
    joined.request_id = first.request_id
    joined.prompt = first.prompt
    joined.prompt_token_ids = first.prompt_token_ids
    joined.num_cached_tokens = first.num_cached_tokens
    joined.prompt_logprobs = None if delta else first.prompt_logprobs
    if not delta:
        joined.outputs = [_concatenated(first.outputs[0], output.outputs[0])]
    return joined


def _concatenated(head: CompletionOutput, tail: CompletionOutput) -> CompletionOutput:
    logprobs = None
    if head.logprobs is not None and tail.logprobs is not None:
        logprobs = [*head.logprobs, *tail.logprobs]
    cumulative = None
    if head.cumulative_logprob is not None and tail.cumulative_logprob is not None:
        cumulative = head.cumulative_logprob + tail.cumulative_logprob
    return replace(
        tail,
        text=head.text + tail.text,
        token_ids=[*head.token_ids, *tail.token_ids],
        logprobs=logprobs,
        cumulative_logprob=cumulative,
    )
