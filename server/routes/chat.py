"""POST /v1/chat/completions: from the request to the response, whole or streamed."""

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from vllm.entrypoints.serve.utils.api_utils import with_cancellation
from vllm.outputs import CompletionOutput, RequestOutput

from server import responses as r
from server.execution import Job
from server.protocol import ChatCompletionRequest, ChatCompletionResponse, generation_responses
from server.sampling import output_budget, sampling_params
from server.services import Services, Shared

router = APIRouter()


class Chat:
    def __init__(self, services: Services) -> None:
        self.s = services

    def prompt_count(self, request: ChatCompletionRequest) -> int:
        return 1

    async def prepare(self, request: ChatCompletionRequest) -> Job:
        messages = [{"role": m.role, "content": m.text()} for m in request.messages]
        prompt = await self.s.prompts.chat_prompt(messages)
        requested = request.max_completion_tokens or request.max_tokens
        max_tokens = output_budget([prompt], requested, self.s.limits.max_model_len)
        top = (request.top_logprobs or 0) if request.logprobs else None
        params = sampling_params(request, self.s.engine.default_sampling, max_tokens, top, None)
        options = request.stream_options
        return Job(
            kind="chatcmpl",
            prompts=[prompt],
            params=params,
            n=request.n,
            stream=request.stream,
            logprobs=top,
            include_usage=bool(options and options.include_usage),
        )

    def whole(self, job: Job, outputs: list[RequestOutput]) -> dict[str, Any]:
        (output,) = outputs
        choices, generated = [], 0
        for completion in output.outputs:
            generated += len(completion.token_ids)
            choices.append(
                {
                    "index": completion.index,
                    "message": {"role": "assistant", "content": completion.text},
                    "logprobs": self._logprobs(job, completion),
                    "finish_reason": completion.finish_reason,
                    "stop_reason": completion.stop_reason,
                }
            )
        body = self._envelope(job, "chat.completion")
        return body | {"choices": choices, "usage": r.usage(job.prompt_tokens, generated)}

    def preamble(self, job: Job) -> dict[str, Any]:
        """Each choice's role first, as OpenAI streams it."""
        first = {"delta": {"role": "assistant", "content": ""}, "logprobs": None}
        choices = [{"index": i, **first, "finish_reason": None} for i in range(job.n)]
        return self._envelope(job, "chat.completion.chunk") | {"choices": choices}

    def chunk(self, job: Job, prompt_index: int, output: RequestOutput) -> dict[str, Any]:
        choices = [
            {
                "index": completion.index,
                "delta": {"content": completion.text},
                "logprobs": self._logprobs(job, completion),
                "finish_reason": completion.finish_reason,
            }
            for completion in output.outputs
        ]
        return self._envelope(job, "chat.completion.chunk") | {"choices": choices}

    def _envelope(self, job: Job, obj: str) -> dict[str, Any]:
        return r.envelope(job.request_id, obj, self.s.executor.model, job.created)

    def _logprobs(self, job: Job, completion: CompletionOutput) -> dict[str, Any] | None:
        if job.logprobs is None:
            return None
        return r.chat_logprobs(
            completion.token_ids, completion.logprobs, job.logprobs, self.s.prompts.decode_token
        )


@router.post(
    "/v1/chat/completions",
    response_model=None,
    responses=generation_responses(ChatCompletionResponse),
)
@with_cancellation
async def chat_completions(
    request: ChatCompletionRequest, raw_request: Request, s: Shared
) -> Response:
    return await s.executor.serve(Chat(s), request, raw_request)
