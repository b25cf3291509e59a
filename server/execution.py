"""Shared by the generation routes: admit, run on the engine, frame the stream.

A route (`server.routes.completions`, `server.routes.chat`) drives its request in one
direction: ``Executor.admit`` (model, limits, admission before tokenization), its own
preparation of a `Job`, ``Executor.start`` (tokens charged, constraint checked), then the
engine's outputs from ``Executor.whole`` or ``Executor.outputs``, which it turns into its
response; a stream goes back out through ``Executor.stream``, the one skeleton of a
server-sent event stream (usage, errors as events, ``[DONE]``) with the request deadline (which
also bounds a client that stops reading). Fan-out (one engine request per prompt) and aborts
are here too.
"""

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import Response, StreamingResponse
from starlette.types import Message, Receive, Scope, Send
from vllm import RequestOutput, SamplingParams

from server import responses as r
from server.admission import Admission, Ticket
from server.constraints import ConstraintBusy, ConstraintTimeout
from server.engine_client import EngineClient
from server.errors import NO_RETRY, RETRY_AFTER_SECONDS, APIError, as_api_error, error_body
from server.lanes import EngineLanes
from server.lora import Adapters
from server.metrics import Metrics
from server.middleware import RequestContext
from server.prompts import Prompt
from server.protocol import SamplingRequest, StreamOptions
from server.rope_tables import CONTINUATION, HEADER, RopeTables, Route, static_table
from server.sampling import Limits, check_request
from server.vllm_compat import LoRARequest, merge_async_iterators

logger = logging.getLogger(__name__)
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SEND_GRACE_SECONDS = 5.0


@dataclass
class Job:
    """A validated request, ready for the engine: one engine request per prompt."""

    kind: str  # "cmpl" or "chatcmpl"
    prompts: list[Prompt]
    params: SamplingParams
    n: int
    stream: bool
    logprobs: int | None = None  # top-k per output token, or None
    prompt_logprobs: int | None = None  # top-k per prompt token, or None
    echo: bool = False
    return_token_ids: bool = False
    stream_options: StreamOptions | None = None
    request_id: str = ""
    model: str = ""  # the name the response carries: the base model's or an adapter's
    lora: LoRARequest | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    expired: bool = False  # the request passed its deadline and was aborted
    echoed: set[int] = field(default_factory=set)  # streamed choices whose prompt was echoed
    generated: int = 0  # output tokens streamed so far
    cached: dict[int, int] = field(default_factory=dict)  # prompt index -> prefix-cache hits
    routes: list[Route] = field(default_factory=list)  # each prompt's RoPE table(s)

    def __post_init__(self) -> None:
        self.request_id = self.request_id or f"{self.kind}-{uuid.uuid4().hex}"

    @property
    def engine_ids(self) -> list[str]:
        return [f"{self.request_id}-{i}" for i in range(len(self.prompts))]

    @property
    def abort_ids(self) -> list[str]:
        """Every engine request the job may have: with the continuations of its switches."""
        continuations = [
            engine_id + CONTINUATION
            for engine_id, route in zip(self.engine_ids, self.routes, strict=False)
            if route.switch_after is not None
        ]
        return self.engine_ids + continuations

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p.token_ids) for p in self.prompts)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.continuous_usage_stats)

    def record(self, prompt_index: int, output: RequestOutput) -> None:
        """Count a streamed output's tokens and its prompt's prefix-cache hits."""
        self.generated += sum(len(c.token_ids) for c in output.outputs)
        if output.num_cached_tokens is not None:
            self.cached[prompt_index] = output.num_cached_tokens

    def usage(self) -> dict[str, Any]:
        return r.usage(self.prompt_tokens, self.generated, sum(self.cached.values()))

    @property
    def tokens(self) -> int:
        """What admission counts: prompt plus the most output, for every sequence."""
        return sum(self.n * (len(p.token_ids) + self.params.max_tokens) for p in self.prompts)


@dataclass(frozen=True)
class Admitted:
    """A request let in: the adapter it names (None: the base model) and its admission."""

    lora: LoRARequest | None
    ticket: Ticket
    context: RequestContext


class Executor:
    def __init__(
        self,
        engine: EngineClient,
        admission: Admission,
        limits: Limits,
        request_timeout: float | None,
        adapters: Adapters,
        metrics: Metrics,
    ) -> None:
        self.engine, self.admission, self.limits = engine, admission, limits
        self.request_timeout, self.adapters, self.metrics = request_timeout, adapters, metrics
        self.model = engine.info.name
        self.lanes = EngineLanes(exclusive_needed=engine.max_lora_rank is not None)
        self.tables = RopeTables(engine.info.rope_policy, static_table(engine.info.rope), metrics)
        self._abort_tasks: set[asyncio.Task] = set()

    def check_model(self, name: str | None) -> LoRARequest | None:
        """The adapter a request names, None for the base model; 404 for any other name."""
        if name is None or name == self.model:
            return None
        adapter = self.adapters.get(name)
        if adapter is None:
            served = ", ".join([self.model, *(a.name for a in self.adapters.all())])
            raise APIError(
                404,
                f"The model '{name}' does not exist; this server serves {served}",
                param="model",
                code="model_not_found",
            )
        return adapter.request

    def admit(self, request: SamplingRequest, prompts: int, scope: Scope) -> Admitted:
        """Model, limits and admission, before any tokenization (``prompts``: how many).

        A request no server could run is a 400; one this server cannot run now, a 429.
        """
        lora = self.check_model(request.model)
        check_request(request, prompts, self.limits)
        ticket = self.admission.admit(request.n * prompts)
        context = RequestContext.of(scope)
        context.cleanups.append(ticket.release)
        return Admitted(lora, ticket, context)

    async def start(self, admitted: Admitted, job: Job, request: SamplingRequest) -> None:
        """The prepared job's tokens charged, its constraint checked, its RoPE tables chosen
        (and named in the response's header)."""
        lora = admitted.lora
        job.model, job.lora = (lora.lora_name if lora else self.model), lora
        self.metrics.model_requests.labels(model=job.model).inc()
        admitted.ticket.charge(job.tokens)
        if job.params.structured_outputs is not None:
            await self._check_constraint(job, _constraint_param(request))
        job.routes = [self.tables.route(len(p.token_ids), job.params) for p in job.prompts]
        admitted.context.headers[HEADER] = ",".join(route.label for route in job.routes)

    async def _check_constraint(self, job: Job, param: str) -> None:
        try:
            await self.engine.check_constraint(job.params)
        except ConstraintBusy:
            raise APIError(
                429,
                f"the constraint compiler stayed busy with other requests' constraints for "
                f"{self.engine.constraint_timeout:g} s; retry later",
                param=param,
                code="constraint_compiler_busy",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            ) from None
        except (TimeoutError, ConstraintTimeout):
            raise APIError(
                400,
                f"the {param} constraint did not compile within the server's "
                f"{self.engine.constraint_timeout:g} s limit (--structured-output-timeout); "
                "simplify it",
                param=param,
                code="constraint_too_complex",
            ) from None
        except Exception as error:
            failure = as_api_error(error)
            if failure.status >= 500:
                raise failure from None
            raise APIError(failure.status, f"{param}: {failure.message}", param=param) from None

    # ------------------------------------------------------------------ engine
    async def _streams(self, job: Job) -> AsyncIterator[tuple[int, RequestOutput]]:
        alone = job.params.prompt_logprobs is not None  # (`server.lanes`: LoRA's limit)
        async with contextlib.AsyncExitStack() as held:
            try:  # the wait for the engine counts against the request's deadline
                async with asyncio.timeout(self.request_timeout):
                    await held.enter_async_context(self.lanes.enter(alone))
            except TimeoutError:
                raise self._timed_out() from None
            generators = [
                self.tables.generate(
                    self.engine, route, p.token_ids, job.params, engine_id, job.lora
                )
                for p, engine_id, route in zip(job.prompts, job.engine_ids, job.routes, strict=True)
            ]
            async for item in merge_async_iterators(*generators):
                yield item

    def _deadline_at(self) -> float | None:
        if self.request_timeout is None:
            return None
        return asyncio.get_running_loop().time() + self.request_timeout

    def _expire(self, job: Job) -> None:
        """Abort the job's engine requests: the engine ends their streams with an abort."""
        if job.expired:
            return
        job.expired = True
        task = asyncio.get_running_loop().create_task(self.engine.abort(job.abort_ids))
        self._abort_tasks.add(task)
        task.add_done_callback(self._abort_tasks.discard)

    @contextlib.contextmanager
    def _deadline(self, job: Job) -> Iterator[None]:
        if self.request_timeout is None:
            yield
            return
        timer = asyncio.get_running_loop().call_later(self.request_timeout, self._expire, job)
        try:
            yield
        finally:
            timer.cancel()

    def _timed_out(self) -> APIError:
        return APIError(
            504,
            f"the request took longer than the server's {self.request_timeout:g} s limit "
            "and was aborted",
            code="request_timeout",
            headers=NO_RETRY,
        )

    async def whole(self, job: Job) -> list[RequestOutput]:
        """Each prompt's final output, within the request deadline."""
        finals: list[RequestOutput | None] = [None] * len(job.prompts)
        try:
            with self._deadline(job):
                async for i, output in self._streams(job):
                    finals[i] = output
        except Exception as error:  # (a client gone cancels this; vLLM then aborts its work)
            raise as_api_error(error) from None
        if job.expired:
            raise self._timed_out()
        return [f for f in finals if f is not None]

    async def outputs(self, job: Job) -> AsyncIterator[tuple[int, RequestOutput]]:
        """(prompt index, output) as the engine streams them, counted for usage, within the
        request deadline (past it: the request's 504 error)."""
        with self._deadline(job):
            async for i, output in self._streams(job):
                if job.expired:
                    raise self._timed_out()
                job.record(i, output)
                yield i, output
        if job.expired:
            raise self._timed_out()

    # ----------------------------------------------------------------- streams
    def stream(
        self,
        job: Job,
        chunks: AsyncGenerator[dict[str, Any] | None],
        scope: Scope,
        preamble: dict[str, Any] | None = None,
        frames: Callable[[AsyncIterator[str]], AsyncIterator[str]] | None = None,
    ) -> Response:
        """The response of a streamed job: ``preamble``, then each chunk the route made of
        `outputs` (None: nothing new, a step of chunked prefill, not sent, as vLLM sends none).
        ``frames`` turns the OpenAI event stream into another API's (Anthropic's)."""
        events = self._event_stream(job, chunks, scope, preamble)
        return DeadlineStreamingResponse(
            frames(events) if frames else events,
            deadline=self._deadline_at(),
            on_expiry=lambda: self._expire(job),
            media_type="text/event-stream",
            headers=SSE_HEADERS,
        )

    async def _event_stream(
        self,
        job: Job,
        chunks: AsyncGenerator[dict[str, Any] | None],
        scope: Scope,
        preamble: dict[str, Any] | None,
    ) -> AsyncIterator[str]:
        """The one stream skeleton: preamble, chunks, usage, [DONE]; failures as an event."""
        if preamble is not None:
            yield r.sse(preamble)
        try:
            async with contextlib.aclosing(chunks):  # a client gone closes the engine's side now
                async for chunk in chunks:
                    if chunk is None:
                        continue
                    if job.continuous_usage:
                        chunk["usage"] = job.usage()
                    yield r.sse(chunk)
        except Exception as error:
            failure = as_api_error(error)
            RequestContext.of(scope).status = failure.status
            yield r.sse(error_body(failure.status, failure.message, failure.param, failure.code))
            return
        if job.include_usage:
            body = r.envelope(job.request_id, endpoint_object(job), job.model, job.created)
            yield r.sse(body | {"choices": [], "usage": job.usage()})
        yield r.SSE_DONE


def _constraint_param(request: SamplingRequest) -> str:
    """The field a request's constraint came from, for its error."""
    if request.response_format is not None and request.response_format.type != "text":
        return "response_format"
    if request.structured_outputs is not None:
        return "structured_outputs"
    return "tools"


def endpoint_object(job: Job) -> str:
    return "text_completion" if job.kind == "cmpl" else "chat.completion.chunk"


class DeadlineStreamingResponse(StreamingResponse):
    """A stream that ends at the request's deadline even if the client stops reading.

    A client that reads nothing makes every send wait; past the deadline the send is given
    up, the engine work aborted and the connection closed, so the request's admission place
    is freed whatever the client does.
    """

    def __init__(
        self,
        content: AsyncIterator[str],
        deadline: float | None,
        on_expiry: Callable[[], None],
        **kwargs: Any,
    ) -> None:
        super().__init__(content, **kwargs)
        self.deadline, self.on_expiry = deadline, on_expiry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.deadline is None:
            await super().__call__(scope, receive, send)
            return

        async def bounded_send(message: Message) -> None:
            # A reading client still gets the error event sent at the deadline.
            async with asyncio.timeout_at(self.deadline + SEND_GRACE_SECONDS):
                await send(message)

        try:
            await super().__call__(scope, receive, bounded_send)
        except* TimeoutError:
            self.on_expiry()
            logger.warning("a streaming client read nothing until the deadline; closed")
