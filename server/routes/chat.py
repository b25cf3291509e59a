"""POST /v1/chat/completions: from the request to the response, whole or streamed."""

from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import Scope
from vllm import CompletionOutput, RequestOutput

from server import responses as r
from server.execution import Job
from server.protocol import ChatCompletionRequest, ChatCompletionResponse, generation_responses
from server.sampling import output_budget, sampling_params, structured_outputs
from server.services import Services, Shared
from server.tools import ToolCalls, template_message
from server.vllm_compat import with_cancellation

router = APIRouter()


class Chat:
    """One chat request: its prompt, its tool mode, and how its outputs are answered."""

    def __init__(self, services: Services) -> None:
        self.s = services
        self.tools: ToolCalls | None = None

    async def prepare(self, request: ChatCompletionRequest) -> Job:
        messages = [template_message(m) for m in request.messages]
        self.tools = ToolCalls(request, messages, self.s.tool_parser, self.s.prompts.tokenizer)
        prompt = await self.s.prompts.chat_prompt(
            messages,
            tools=self.tools.for_template,
            add_generation_prompt=request.add_generation_prompt,
            continue_final_message=request.continue_final_message,
            extra=request.chat_template_kwargs,
        )
        prompt = self.s.prompts.truncated(prompt, request.truncate_prompt_tokens)
        requested = request.max_completion_tokens or request.max_tokens
        max_tokens = output_budget([prompt], requested, self.s.limits.max_model_len)
        top = (request.top_logprobs or 0) if request.logprobs else None
        skip_special = self.tools.skip_special_tokens
        if skip_special is not None:
            request = request.model_copy(update={"skip_special_tokens": skip_special})
        params = sampling_params(
            request,
            self.s.engine.default_sampling,
            max_tokens,
            top,
            request.prompt_logprobs,
            self.s.limits.vocab_size,
            structured_outputs(request, self.tools.schema),
        )
        return Job(
            kind="chatcmpl",
            prompts=[prompt],
            params=params,
            n=request.n,
            stream=request.stream,
            logprobs=top,
            prompt_logprobs=request.prompt_logprobs,
            stream_options=request.stream_options,
        )

    def whole(self, job: Job, outputs: list[RequestOutput]) -> dict[str, Any]:
        (output,) = outputs
        choices = []
        for completion in output.outputs:
            content, calls = self.tools.message(completion.text)
            message: dict[str, Any] = {"role": "assistant", "content": content}
            if calls:
                message["tool_calls"] = calls
            choices.append(
                {
                    "index": completion.index,
                    "message": message,
                    "logprobs": self._logprobs(job, completion),
                    "finish_reason": _finish_reason(completion, bool(calls)),
                    "stop_reason": completion.stop_reason,
                }
            )
        body = self._envelope(job, "chat.completion") | {"choices": choices}
        if job.prompt_logprobs is not None:
            body["prompt_logprobs"] = r.prompt_logprobs(output.prompt_logprobs)
        return body | {"usage": r.outputs_usage(job.prompt_tokens, outputs)}

    def preamble(self, job: Job) -> dict[str, Any]:
        """Each choice's role first, as OpenAI streams it."""
        first = {"delta": {"role": "assistant", "content": ""}, "logprobs": None}
        choices = [{"index": i, **first, "finish_reason": None} for i in range(job.n)]
        return self._envelope(job, "chat.completion.chunk") | {"choices": choices}

    def chunk(self, job: Job, prompt_index: int, output: RequestOutput) -> dict[str, Any] | None:
        choices = []
        for completion in output.outputs:
            finished = completion.finish_reason is not None
            delta = self.tools.delta(
                completion.index, completion.text, list(completion.token_ids), finished
            )
            if delta is None and not finished:
                continue  # nothing to say yet (a prefill step, or a call still being buffered)
            called = self.tools.called(completion.index)
            choices.append(
                {
                    "index": completion.index,
                    "delta": delta or {},
                    "logprobs": self._logprobs(job, completion),
                    "finish_reason": _finish_reason(completion, called) if finished else None,
                }
            )
        if not choices:
            return None
        return self._envelope(job, "chat.completion.chunk") | {"choices": choices}

    def _envelope(self, job: Job, obj: str) -> dict[str, Any]:
        return r.envelope(job.request_id, obj, job.model, job.created)

    def _logprobs(self, job: Job, completion: CompletionOutput) -> dict[str, Any] | None:
        if job.logprobs is None:
            return None
        return r.chat_logprobs(
            completion.token_ids, completion.logprobs, job.logprobs, self.s.prompts.decode_token
        )


def _finish_reason(completion: CompletionOutput, called: bool) -> str | None:
    """OpenAI says "tool_calls" when a choice ended in calls (not when it was cut short)."""
    if called and completion.finish_reason == "stop":
        return "tool_calls"
    return completion.finish_reason


async def serve_chat(
    request: ChatCompletionRequest,
    scope: Scope,
    s: Services,
    whole: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    frames: Callable[[AsyncIterator[str]], AsyncIterator[str]] | None = None,
) -> Response:
    """A chat request from admission to its response; ``whole`` and ``frames`` reshape the
    OpenAI body and event stream for the APIs translated onto chat (`server.routes.messages`)."""
    endpoint = Chat(s)
    admitted = s.executor.admit(request, 1, scope)
    job = await endpoint.prepare(request)
    await s.executor.start(admitted, job, request)
    if job.stream:
        chunks = (endpoint.chunk(job, i, output) async for i, output in s.executor.outputs(job))
        return s.executor.stream(job, chunks, scope, endpoint.preamble(job), frames)
    body = endpoint.whole(job, await s.executor.whole(job))
    return JSONResponse(whole(body) if whole else body)


@router.post(
    "/v1/chat/completions",
    response_model=None,
    responses=generation_responses(ChatCompletionResponse),
)
@with_cancellation
async def chat_completions(
    request: ChatCompletionRequest, raw_request: Request, s: Shared
) -> Response:
    return await serve_chat(request, raw_request.scope, s)
