"""The checks both generation endpoints make, and their vLLM `SamplingParams`."""

from dataclasses import dataclass

from vllm import SamplingParams
from vllm.sampling_params import RequestOutputKind

from server.errors import APIError, as_api_error
from server.prompts import Prompt
from server.protocol import SamplingRequest


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the engine."""

    max_model_len: int
    vocab_size: int
    max_n: int
    max_prompts: int  # prompts in one request
    max_sequences: int  # n x prompts in one request


def check_request(request: SamplingRequest, prompts: int, limits: Limits) -> None:
    """What can be checked before any prompt is tokenized."""
    if request.n > limits.max_n:
        raise APIError(400, f"n must be at most {limits.max_n} (got {request.n})", param="n")
    if prompts > limits.max_prompts:
        message = f"at most {limits.max_prompts} prompts per request (got {prompts})"
        raise APIError(400, message, param="prompt")
    if request.n * prompts > limits.max_sequences:
        raise APIError(
            400,
            f"n x prompts must be at most {limits.max_sequences} (got {request.n} x {prompts})",
            param="n",
        )
    if request.top_k is not None and request.top_k > limits.vocab_size:
        message = f"top_k must be at most the vocabulary size {limits.vocab_size}"
        raise APIError(400, message, param="top_k")


def output_budget(prompts: list[Prompt], requested: int | None, max_model_len: int) -> int:
    """Tokens each sequence may generate: as requested, or up to the end of the context."""
    longest = max(len(p.token_ids) for p in prompts)
    if longest >= max_model_len:
        raise APIError(
            400,
            f"This model's maximum context length is {max_model_len} tokens; "
            f"the prompt has {longest} tokens",
            param="prompt",
            code="context_length_exceeded",
        )
    if requested is None:
        return max_model_len - longest
    if longest + requested > max_model_len:
        raise APIError(
            400,
            f"This model's maximum context length is {max_model_len} tokens; "
            f"{longest + requested} were requested ({longest} in the prompt, "
            f"{requested} for the completion)",
            param="max_tokens",
            code="context_length_exceeded",
        )
    return requested


def sampling_params(
    request: SamplingRequest,
    defaults: dict,
    max_tokens: int,
    logprobs: int | None,
    prompt_logprobs: int | None,
) -> SamplingParams:
    """vLLM's parameters: the checkpoint's generation defaults, then the request's values."""
    fields = {
        "temperature": request.temperature,
        "top_p": request.top_p,
        "top_k": request.top_k,
        "min_p": request.min_p,
        "presence_penalty": request.presence_penalty,
        "frequency_penalty": request.frequency_penalty,
        "repetition_penalty": request.repetition_penalty,
    }
    values = {**defaults, **{k: v for k, v in fields.items() if v is not None}}
    stop = [request.stop] if isinstance(request.stop, str) else request.stop
    kind = RequestOutputKind.DELTA if request.stream else RequestOutputKind.FINAL_ONLY
    try:
        return SamplingParams(
            n=request.n,
            max_tokens=max_tokens,
            stop=stop or None,
            seed=request.seed,
            ignore_eos=request.ignore_eos,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            output_kind=kind,
            **values,
        )
    except Exception as error:  # vLLM's own checks (temperature range, ...) are the client's
        raise as_api_error(error) from None
