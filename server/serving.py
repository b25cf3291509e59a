"""Completions and chat completions: check a request, run it on the engine, shape the answer.

Prompts are tokenized once here (their length is checked against the context before the
engine sees them) and handed to vLLM as token ids; sampling, batching and detokenization of
the output are vLLM's.
"""

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

from vllm import SamplingParams
from vllm.outputs import RequestOutput
from vllm.sampling_params import RequestOutputKind
from vllm.utils.async_utils import merge_async_iterators

from server import responses as r
from server.engine import Engine
from server.errors import APIError, error_body
from server.protocol import ChatCompletionRequest, CompletionRequest, SamplingRequest


@dataclass
class Prompt:
    token_ids: list[int]
    text: str | None = None  # known for text prompts (echo uses it)


@dataclass
class Job:
    """A validated request, ready for the engine: one engine request per prompt."""

    request_id: str
    prompts: list[Prompt]
    params: SamplingParams
    n: int
    logprobs: int | None  # top-k per output token, or None
    echo: bool = False
    include_usage: bool = False
    created: int = 0
    expired: bool = False  # the request passed its deadline and was aborted

    @property
    def engine_ids(self) -> list[str]:
        return [f"{self.request_id}-{i}" for i in range(len(self.prompts))]

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p.token_ids) for p in self.prompts)


class Serving:
    def __init__(self, engine: Engine, max_n: int, request_timeout: float | None) -> None:
        self.engine = engine
        self.max_n, self.request_timeout = max_n, request_timeout
        self._abort_tasks: set[asyncio.Task] = set()
        self.tokenizer = engine.tokenizer
        self.vocab_size = len(engine.tokenizer)
        self.model = engine.info.name
        self.max_model_len = engine.info.max_model_len

    # ----------------------------------------------------------------- checks
    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.model:
            raise APIError(
                404,
                f"The model '{name}' does not exist; this server serves '{self.model}'",
                param="model",
                code="model_not_found",
            )

    def decode(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id])

    def _token_prompt(self, ids: list[int]) -> Prompt:
        if not ids:
            raise APIError(400, "prompt must not be empty", param="prompt")
        if max(ids) >= self.vocab_size:
            raise APIError(
                400,
                f"token id {max(ids)} is outside the vocabulary (size {self.vocab_size})",
                param="prompt",
            )
        return Prompt(ids)

    async def _text_prompt(self, text: str, add_special_tokens: bool = True) -> Prompt:
        if not text:
            raise APIError(400, "prompt must not be empty", param="prompt")
        # A 30K-token prompt takes tens of milliseconds to encode: off the event loop, where
        # it would stall every running stream (the Rust tokenizer releases the GIL).
        ids = await asyncio.to_thread(
            self.tokenizer.encode, text, add_special_tokens=add_special_tokens
        )
        return Prompt(ids, text)

    async def completion_prompts(self, prompt: Any) -> list[Prompt]:
        if isinstance(prompt, str):
            return [await self._text_prompt(prompt)]
        if not prompt:
            raise APIError(400, "prompt must not be empty", param="prompt")
        if isinstance(prompt[0], int):
            return [self._token_prompt(prompt)]
        if isinstance(prompt[0], str):
            return [await self._text_prompt(p) for p in prompt]
        return [self._token_prompt(p) for p in prompt]

    async def chat_prompt(self, request: ChatCompletionRequest) -> Prompt:
        messages = [{"role": m.role, "content": m.text()} for m in request.messages]
        try:
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        except Exception as error:  # the template's own raise_exception, or a Jinja error
            raise APIError(400, f"messages: {error}", param="messages") from None
        # The template writes the BOS token itself.
        return await self._text_prompt(text, add_special_tokens=False)

    def _max_tokens(self, prompts: list[Prompt], requested: int | None) -> int:
        longest = max(len(p.token_ids) for p in prompts)
        if longest >= self.max_model_len:
            raise APIError(
                400,
                f"This model's maximum context length is {self.max_model_len} tokens; "
                f"the prompt has {longest} tokens",
                param="prompt",
                code="context_length_exceeded",
            )
        if requested is None:
            return self.max_model_len - longest
        if longest + requested > self.max_model_len:
            raise APIError(
                400,
                f"This model's maximum context length is {self.max_model_len} tokens; "
                f"{longest + requested} were requested ({longest} in the prompt, "
                f"{requested} for the completion)",
                param="max_tokens",
                code="context_length_exceeded",
            )
        return requested

    def _sampling_params(
        self,
        request: SamplingRequest,
        max_tokens: int,
        logprobs: int | None,
        prompt_logprobs: int | None,
    ) -> SamplingParams:
        fields = {
            "temperature": request.temperature,
            "top_p": request.top_p,
            "top_k": request.top_k,
            "min_p": request.min_p,
            "presence_penalty": request.presence_penalty,
            "frequency_penalty": request.frequency_penalty,
            "repetition_penalty": request.repetition_penalty,
        }
        values = {**self.engine.default_sampling}
        values.update({k: v for k, v in fields.items() if v is not None})
        stop = [request.stop] if isinstance(request.stop, str) else request.stop
        try:
            return SamplingParams(
                n=request.n,
                max_tokens=max_tokens,
                stop=stop or None,
                seed=request.seed,
                ignore_eos=request.ignore_eos,
                logprobs=logprobs,
                prompt_logprobs=prompt_logprobs,
                output_kind=RequestOutputKind.DELTA
                if request.stream
                else RequestOutputKind.FINAL_ONLY,
                **values,
            )
        except ValueError as error:
            raise APIError(400, str(error)) from None

    def _check_sampling(self, request: SamplingRequest) -> None:
        if request.n > self.max_n:
            raise APIError(400, f"n must be at most {self.max_n} (got {request.n})", param="n")
        if request.top_k is not None and request.top_k > self.vocab_size:
            message = f"top_k must be at most the vocabulary size {self.vocab_size}"
            raise APIError(400, message, param="top_k")

    async def completion_job(self, request: CompletionRequest) -> Job:
        self.check_model(request.model)
        self._check_sampling(request)
        prompts = await self.completion_prompts(request.prompt)
        max_tokens = self._max_tokens(prompts, request.max_tokens)
        prompt_logprobs = (
            request.logprobs if request.echo and request.logprobs is not None else None
        )
        params = self._sampling_params(request, max_tokens, request.logprobs, prompt_logprobs)
        return self._job("cmpl", request, prompts, params, request.logprobs, request.echo)

    async def chat_job(self, request: ChatCompletionRequest) -> Job:
        self.check_model(request.model)
        self._check_sampling(request)
        prompts = [await self.chat_prompt(request)]
        requested = request.max_completion_tokens or request.max_tokens
        max_tokens = self._max_tokens(prompts, requested)
        top = (request.top_logprobs or 0) if request.logprobs else None
        params = self._sampling_params(request, max_tokens, top, None)
        return self._job("chatcmpl", request, prompts, params, top, False)

    def _job(self, prefix, request, prompts, params, logprobs, echo) -> Job:
        options = request.stream_options
        return Job(
            request_id=f"{prefix}-{uuid.uuid4().hex}",
            prompts=prompts,
            params=params,
            n=request.n,
            logprobs=logprobs,
            echo=echo,
            include_usage=bool(options and options.include_usage),
            created=int(time.time()),
        )

    # -------------------------------------------------------------- running
    def _streams(self, job: Job) -> AsyncIterator[tuple[int, RequestOutput]]:
        generators = [
            self.engine.generate(p.token_ids, job.params, engine_id)
            for p, engine_id in zip(job.prompts, job.engine_ids, strict=True)
        ]
        return merge_async_iterators(*generators)

    @contextlib.contextmanager
    def _deadline(self, job: Job) -> Iterator[None]:
        """Abort the job's engine requests when it passes the request timeout.

        One timer per request: the engine then ends the request's stream with an abort
        output, and the caller answers 408.
        """
        if self.request_timeout is None:
            yield
            return
        loop = asyncio.get_running_loop()

        def expire() -> None:
            job.expired = True
            task = loop.create_task(self.engine.abort(job.engine_ids))
            self._abort_tasks.add(task)
            task.add_done_callback(self._abort_tasks.discard)

        timer = loop.call_later(self.request_timeout, expire)
        try:
            yield
        finally:
            timer.cancel()

    def _timed_out(self) -> APIError:
        return APIError(
            408,
            f"the request took longer than the server's {self.request_timeout:g} s limit "
            "and was aborted",
            code="request_timeout",
        )

    async def _final_outputs(self, job: Job) -> list[RequestOutput]:
        finals: list[RequestOutput | None] = [None] * len(job.prompts)
        try:
            with self._deadline(job):
                async for i, output in self._streams(job):
                    finals[i] = output
        except ValueError as error:
            raise APIError(400, str(error)) from None
        if job.expired:
            raise self._timed_out()
        return [f for f in finals if f is not None]

    async def _stream_outputs(self, job: Job) -> AsyncIterator[tuple[int, RequestOutput]]:
        """The engine's outputs for a streamed job; raises APIError(408) past its deadline."""
        with self._deadline(job):
            async for i, output in self._streams(job):
                if job.expired:
                    raise self._timed_out()
                yield i, output

    def _usage(self, job: Job, completion_tokens: int) -> dict[str, int]:
        return r.usage(sum(len(p.token_ids) for p in job.prompts), completion_tokens)

    # ----------------------------------------------------------- completions
    async def complete(self, job: Job) -> dict[str, Any]:
        outputs = await self._final_outputs(job)
        choices, generated = [], 0
        for i, output in enumerate(outputs):
            prompt = job.prompts[i]
            for completion in output.outputs:
                generated += len(completion.token_ids)
                choices.append(
                    self._completion_choice(job, i, prompt, output, completion, job.echo)
                )
        body = r.envelope(job.request_id, "text_completion", self.model, job.created)
        return body | {"choices": choices, "usage": self._usage(job, generated)}

    def _prompt_text(self, prompt: Prompt) -> str:
        if prompt.text is None:
            prompt.text = self.tokenizer.decode(prompt.token_ids)
        return prompt.text

    def _completion_choice(
        self, job: Job, prompt_index: int, prompt: Prompt, output, completion, echo: bool
    ) -> dict[str, Any]:
        text, logprobs = completion.text, None
        if job.logprobs is not None:
            logprobs = r.completion_logprobs(
                completion.token_ids, completion.logprobs, job.logprobs, self.decode
            )
        if echo:
            prompt_text = self._prompt_text(prompt)
            if logprobs is not None and output.prompt_logprobs is not None:
                echoed = r.completion_logprobs(
                    prompt.token_ids, output.prompt_logprobs, job.logprobs, self.decode
                )
                shifted = [o + len(prompt_text) for o in logprobs["text_offset"]]
                logprobs = r.merge_completion_logprobs(echoed, logprobs | {"text_offset": shifted})
            text = prompt_text + text
        return {
            "index": prompt_index * job.n + completion.index,
            "text": text,
            "logprobs": logprobs,
            "finish_reason": completion.finish_reason,
            "stop_reason": completion.stop_reason,
        }

    async def stream_completion(self, job: Job) -> AsyncIterator[str]:
        base = r.envelope(job.request_id, "text_completion", self.model, job.created)
        echoed: set[int] = set()
        generated = 0
        try:
            async for i, output in self._stream_outputs(job):
                choices = []
                for completion in output.outputs:
                    index = i * job.n + completion.index
                    generated += len(completion.token_ids)
                    echo = job.echo and index not in echoed  # the prompt goes in the first chunk
                    echoed.add(index)
                    prompt = job.prompts[i]
                    choices.append(
                        self._completion_choice(job, i, prompt, output, completion, echo)
                    )
                yield r.sse(base | {"choices": choices})
        except Exception as error:  # the engine failed mid-stream: say so in the stream
            yield r.sse(stream_error(error))
            return
        if job.include_usage:
            yield r.sse(base | {"choices": [], "usage": self._usage(job, generated)})
        yield r.SSE_DONE

    # ------------------------------------------------------------------ chat
    async def chat(self, job: Job) -> dict[str, Any]:
        (output,) = await self._final_outputs(job)
        choices, generated = [], 0
        for completion in output.outputs:
            generated += len(completion.token_ids)
            choices.append(
                {
                    "index": completion.index,
                    "message": {"role": "assistant", "content": completion.text},
                    "logprobs": self._chat_logprobs(job, completion),
                    "finish_reason": completion.finish_reason,
                    "stop_reason": completion.stop_reason,
                }
            )
        body = r.envelope(job.request_id, "chat.completion", self.model, job.created)
        return body | {"choices": choices, "usage": self._usage(job, generated)}

    def _chat_logprobs(self, job: Job, completion: Any) -> dict[str, Any] | None:
        if job.logprobs is None:
            return None
        return r.chat_logprobs(completion.token_ids, completion.logprobs, job.logprobs, self.decode)

    async def stream_chat(self, job: Job) -> AsyncIterator[str]:
        base = r.envelope(job.request_id, "chat.completion.chunk", self.model, job.created)
        first = {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
        yield r.sse(base | {"choices": [first | {"index": i} for i in range(job.n)]})
        generated = 0
        try:
            async for _, output in self._stream_outputs(job):
                choices = []
                for completion in output.outputs:
                    generated += len(completion.token_ids)
                    choices.append(
                        {
                            "index": completion.index,
                            "delta": {"content": completion.text},
                            "logprobs": self._chat_logprobs(job, completion),
                            "finish_reason": completion.finish_reason,
                        }
                    )
                yield r.sse(base | {"choices": choices})
        except Exception as error:
            yield r.sse(stream_error(error))
            return
        if job.include_usage:
            yield r.sse(base | {"choices": [], "usage": self._usage(job, generated)})
        yield r.SSE_DONE


def stream_error(error: Exception) -> dict[str, Any]:
    if isinstance(error, APIError):
        return error_body(error.status, error.message, error.param, error.code)
    if isinstance(error, ValueError):
        return error_body(400, str(error))
    return error_body(500, "the engine failed while generating")
