"""The checks both generation endpoints make, and their vLLM `SamplingParams`."""

from dataclasses import dataclass
from typing import Any

from vllm import SamplingParams

from server.errors import APIError, as_api_error
from server.prompts import Prompt
from server.protocol import SamplingRequest
from server.vllm_compat import RequestOutputKind, StructuredOutputsParams


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


def structured_outputs(
    request: SamplingRequest, tool_schema: dict[str, Any] | None = None
) -> StructuredOutputsParams | None:
    """vLLM's constraint for the request: a forced tool call's schema, else ``response_format``,
    else vLLM's own ``structured_outputs`` field, as vLLM's server reads them."""
    if tool_schema is not None:
        return StructuredOutputsParams(json=tool_schema)
    form = request.response_format
    if form is not None and form.type == "json_object":
        return StructuredOutputsParams(json_object=True)
    if form is not None and form.type == "json_schema":
        return StructuredOutputsParams(json=form.json_schema.json_schema or {"type": "object"})
    given = request.structured_outputs
    if given is None:
        return None
    return StructuredOutputsParams(**given.model_dump(by_alias=True))


def logit_bias(request: SamplingRequest, vocab_size: int) -> dict[int, float] | None:
    """OpenAI sends token ids as strings; each must name a token of the vocabulary."""
    if not request.logit_bias:
        return None
    bias = {}
    for key, value in request.logit_bias.items():
        # ASCII digits only: str.isdigit() also takes "\u00b2" (which int() refuses) and
        # "\u0661" (an Arabic-Indic one, which int() reads as 1).
        if not (key.isascii() and key.isdigit()) or int(key) >= vocab_size:
            raise APIError(
                400,
                f"logit_bias keys must be token ids below the vocabulary size {vocab_size} "
                f"(got {key!r})",
                param="logit_bias",
            )
        bias[int(key)] = value
    return bias


def check_token_ids(ids: list[int] | None, vocab_size: int, param: str) -> None:
    if ids and max(ids) >= vocab_size:
        message = f"token id {max(ids)} is outside the vocabulary (size {vocab_size})"
        raise APIError(400, message, param=param)


def sampling_params(
    request: SamplingRequest,
    defaults: dict,
    max_tokens: int,
    logprobs: int | None,
    prompt_logprobs: int | None,
    vocab_size: int,
    constraint: StructuredOutputsParams | None = None,
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
    check_token_ids(request.stop_token_ids, vocab_size, "stop_token_ids")
    if request.min_tokens > max_tokens:
        message = f"min_tokens ({request.min_tokens}) must be at most max_tokens ({max_tokens})"
        raise APIError(400, message, param="min_tokens")
    try:
        return SamplingParams(
            n=request.n,
            max_tokens=max_tokens,
            min_tokens=request.min_tokens,
            stop=stop or None,
            stop_token_ids=request.stop_token_ids,
            include_stop_str_in_output=request.include_stop_str_in_output or request.no_stop_trim,
            bad_words=request.bad_words,
            logit_bias=logit_bias(request, vocab_size),
            skip_special_tokens=request.skip_special_tokens,
            spaces_between_special_tokens=request.spaces_between_special_tokens,
            seed=request.seed,
            ignore_eos=request.ignore_eos,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            structured_outputs=constraint or structured_outputs(request),
            output_kind=kind,
            **values,
        )
    except Exception as error:  # vLLM's own checks (temperature range, ...) are the client's
        raise as_api_error(error) from None
