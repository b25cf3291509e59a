"""POST /v1/completions: from the request to the response, whole or streamed."""

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from vllm import CompletionOutput, RequestOutput

from server import responses as r
from server.execution import Job
from server.prompts import Prompt
from server.protocol import CompletionRequest, CompletionResponse, generation_responses
from server.sampling import output_budget, sampling_params
from server.services import Services, Shared
from server.vllm_compat import with_cancellation

router = APIRouter()


class Completions:
    """One completions request; streamed choices keep their text offsets across chunks."""

    def __init__(self, services: Services) -> None:
        self.s = services
        self.offsets: dict[int, int] = {}  # choice index -> text_offset of its next token

    def prompt_count(self, request: CompletionRequest) -> int:
        prompt = request.prompt
        if isinstance(prompt, str) or not prompt or isinstance(prompt[0], int):
            return 1
        return len(prompt)

    async def prepare(self, request: CompletionRequest) -> Job:
        prompts = [
            self.s.prompts.truncated(p, request.truncate_prompt_tokens)
            for p in await self._prompts(request.prompt)
        ]
        max_tokens = output_budget(prompts, request.max_tokens, self.s.limits.max_model_len)
        echoed = request.logprobs if request.echo and request.logprobs is not None else None
        prompt_logprobs = request.prompt_logprobs if echoed is None else echoed
        params = sampling_params(
            request,
            self.s.engine.default_sampling,
            max_tokens,
            request.logprobs,
            prompt_logprobs,
            self.s.limits.vocab_size,
        )
        return Job(
            kind="cmpl",
            prompts=prompts,
            params=params,
            n=request.n,
            stream=request.stream,
            logprobs=request.logprobs,
            prompt_logprobs=request.prompt_logprobs,
            echo=request.echo,
            return_token_ids=request.return_token_ids,
            stream_options=request.stream_options,
        )

    async def _prompts(self, prompt: Any) -> list[Prompt]:
        tokenizer = self.s.prompts
        if isinstance(prompt, str):
            return [await tokenizer.text_prompt(prompt)]
        if not prompt:
            return [tokenizer.token_prompt([])]  # refused: empty
        if isinstance(prompt[0], int):
            return [tokenizer.token_prompt(prompt)]
        if isinstance(prompt[0], str):
            tokenizer.check_length(sum(len(p) for p in prompt), "prompt")
            return [await tokenizer.text_prompt(p) for p in prompt]
        return [tokenizer.token_prompt(p) for p in prompt]

    def whole(self, job: Job, outputs: list[RequestOutput]) -> dict[str, Any]:
        choices = [
            self._choice(job, i, output, completion, first=True)
            for i, output in enumerate(outputs)
            for completion in output.outputs
        ]
        body = r.envelope(job.request_id, "text_completion", job.model, job.created)
        return body | {"choices": choices, "usage": r.outputs_usage(job.prompt_tokens, outputs)}

    def chunk(self, job: Job, prompt_index: int, output: RequestOutput) -> dict[str, Any] | None:
        choices = []
        for completion in output.outputs:
            index = prompt_index * job.n + completion.index
            first = index not in job.echoed  # the echo goes in each choice's first chunk
            news = completion.text or completion.token_ids or completion.finish_reason
            if not (news or (first and job.echo)):
                continue  # a step of chunked prefill: nothing to send
            job.echoed.add(index)
            choices.append(self._choice(job, prompt_index, output, completion, first))
        if not choices:
            return None
        body = r.envelope(job.request_id, "text_completion", job.model, job.created)
        return body | {"choices": choices}

    def _choice(
        self,
        job: Job,
        prompt_index: int,
        output: RequestOutput,
        completion: CompletionOutput,
        first: bool,
    ) -> dict[str, Any]:
        prompt = job.prompts[prompt_index]
        echo = job.echo and first
        index = prompt_index * job.n + completion.index
        text, logprobs, echoed = completion.text, None, None
        decode = self.s.prompts.decode_token
        offset = self.offsets.get(index, 0)
        if echo:
            if prompt.text is None:
                prompt.text = self.s.prompts.decode(prompt.token_ids)
            if job.logprobs is not None and output.prompt_logprobs is not None:
                echoed = r.completion_logprobs(
                    prompt.token_ids, output.prompt_logprobs, job.logprobs, decode
                )
            text = prompt.text + text
            offset = len(prompt.text)
        if job.logprobs is not None:
            logprobs = r.completion_logprobs(
                completion.token_ids, completion.logprobs, job.logprobs, decode, offset
            )
            offset += sum(len(token) for token in logprobs["tokens"])
            if echoed is not None:
                logprobs = r.merge_completion_logprobs(echoed, logprobs)
        self.offsets[index] = offset
        choice = {
            "index": index,
            "text": text,
            "logprobs": logprobs,
            "finish_reason": completion.finish_reason,
            "stop_reason": completion.stop_reason,
        }
        if job.prompt_logprobs is not None and first:
            choice["prompt_logprobs"] = r.prompt_logprobs(output.prompt_logprobs)
        if job.return_token_ids:
            choice["token_ids"] = list(completion.token_ids)
            if first:
                choice["prompt_token_ids"] = prompt.token_ids
        return choice


@router.post(
    "/v1/completions", response_model=None, responses=generation_responses(CompletionResponse)
)
@with_cancellation
async def completions(request: CompletionRequest, raw_request: Request, s: Shared) -> Response:
    endpoint = Completions(s)
    admitted = s.executor.admit(request, endpoint.prompt_count(request), raw_request.scope)
    job = await endpoint.prepare(request)
    await s.executor.start(admitted, job, request)
    if job.stream:
        chunks = (endpoint.chunk(job, i, output) async for i, output in s.executor.outputs(job))
        return s.executor.stream(job, chunks, raw_request.scope)
    return JSONResponse(endpoint.whole(job, await s.executor.whole(job)))
