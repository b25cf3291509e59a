"""Shared by the generation endpoints: admit, prepare, run on the engine, answer or stream.

An endpoint (`server.routes.completions`, `server.routes.chat`) says how its request becomes
a `Job` and how engine outputs become its response; this module does the rest the same way
for both: admission before tokenization, fan-out of one engine request per prompt, the
request deadline (which also bounds a client that stops reading), aborts, and the one
skeleton of a server-sent event stream with its error events.
"""

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Message, Receive, Scope, Send
from vllm import SamplingParams
from vllm.lora.request import LoRARequest
from vllm.outputs import RequestOutput
from vllm.utils.async_utils import merge_async_iterators

from server import responses as r
from server.admission import Admission, Ticket
from server.constraints import ConstraintTimeout
from server.engine import Engine
from server.errors import NO_RETRY, APIError, as_api_error, error_body
from server.lora import Adapters
from server.metrics import Metrics
from server.middleware import RequestContext
from server.prompts import Prompt
from server.protocol import SamplingRequest, StreamOptions
from server.sampling import Limits, check_request

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
    stream_options: StreamOptions | None = None
    request_id: str = ""
    model: str = ""  # the name the response carries: the base model's or an adapter's
    lora: LoRARequest | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    expired: bool = False  # the request passed its deadline and was aborted
    echoed: set[int] = field(default_factory=set)  # streamed choices whose prompt was echoed
    generated: int = 0  # output tokens streamed so far
    cached: dict[int, int] = field(default_factory=dict)  # prompt index -> prefix-cache hits

    def __post_init__(self) -> None:
        self.request_id = self.request_id or f"{self.kind}-{uuid.uuid4().hex}"

    @property
    def engine_ids(self) -> list[str]:
        return [f"{self.request_id}-{i}" for i in range(len(self.prompts))]

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


class Endpoint(Protocol):
    """What a generation endpoint supplies; the rest is `Executor.serve`."""

    def prompt_count(self, request: Any) -> int: ...

    async def prepare(self, request: Any) -> Job: ...

    def whole(self, job: Job, outputs: list[RequestOutput]) -> dict[str, Any]: ...

    def preamble(self, job: Job) -> dict[str, Any] | None: ...

    def chunk(
        self, job: Job, prompt_index: int, output: RequestOutput
    ) -> dict[str, Any] | None: ...


class Executor:
    def __init__(
        self,
        engine: Engine,
        admission: Admission,
        limits: Limits,
        request_timeout: float | None,
        adapters: Adapters,
        metrics: Metrics,
    ) -> None:
        self.engine, self.admission, self.limits = engine, admission, limits
        self.request_timeout, self.adapters, self.metrics = request_timeout, adapters, metrics
        self.model = engine.info.name
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

    async def serve(
        self, endpoint: Endpoint, request: SamplingRequest, raw_request: Request
    ) -> Response:
        """Check, admit (before any tokenization), prepare, charge the tokens, run.

        A request no server could run is a 400; one this server cannot run now, a 429.
        """
        lora = self.check_model(request.model)
        prompts = endpoint.prompt_count(request)
        check_request(request, prompts, self.limits)
        ticket = self.admission.admit(request.n * prompts)
        RequestContext.of(raw_request.scope).cleanups.append(ticket.release)
        job = await endpoint.prepare(request)
        job.model, job.lora = (lora.lora_name if lora else self.model), lora
        self.metrics.model_requests.labels(model=job.model).inc()
        ticket.charge(job.tokens)
        if job.params.structured_outputs is not None:
            await self._check_constraint(job, _constraint_param(request))
        if job.stream:
            return DeadlineStreamingResponse(
                self._event_stream(endpoint, job, raw_request.scope),
                deadline=self._deadline_at(),
                on_expiry=lambda: self._expire(job),
                media_type="text/event-stream",
                headers=SSE_HEADERS,
            )
        return JSONResponse(endpoint.whole(job, await self._final_outputs(job, ticket)))

    async def _check_constraint(self, job: Job, param: str) -> None:
        try:
            await self.engine.check_constraint(job.params)
        except (TimeoutError, ConstraintTimeout):
            raise APIError(
                400,
                f"the {param} constraint did not compile within the server's "
                f"{self.engine.constraints.timeout:g} s limit (--structured-output-timeout); "
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
    def _streams(self, job: Job) -> AsyncIterator[tuple[int, RequestOutput]]:
        generators = [
            self.engine.generate(p.token_ids, job.params, engine_id, job.lora)
            for p, engine_id in zip(job.prompts, job.engine_ids, strict=True)
        ]
        return merge_async_iterators(*generators)

    def _deadline_at(self) -> float | None:
        if self.request_timeout is None:
            return None
        return asyncio.get_running_loop().time() + self.request_timeout

    def _expire(self, job: Job) -> None:
        """Abort the job's engine requests: the engine ends their streams with an abort."""
        if job.expired:
            return
        job.expired = True
        task = asyncio.get_running_loop().create_task(self.engine.abort(job.engine_ids))
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

    async def _final_outputs(self, job: Job, ticket: Ticket) -> list[RequestOutput]:
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

    # ----------------------------------------------------------------- streams
    async def _event_stream(self, endpoint: Endpoint, job: Job, scope: Scope):
        """The one stream skeleton: preamble, chunks, usage, [DONE]; failures as an event."""
        preamble = endpoint.preamble(job)
        if preamble is not None:
            yield r.sse(preamble)
        try:
            with self._deadline(job):
                async for i, output in self._streams(job):
                    if job.expired:
                        raise self._timed_out()
                    job.record(i, output)
                    chunk = endpoint.chunk(job, i, output)
                    if chunk is None:
                        continue  # nothing new (a step of chunked prefill): vLLM sends none
                    if job.continuous_usage:
                        chunk["usage"] = job.usage()
                    yield r.sse(chunk)
            if job.expired:
                raise self._timed_out()
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
