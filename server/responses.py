"""OpenAI response bodies and stream chunks, built as plain dicts from vLLM outputs."""

import json
import math
from collections.abc import Callable, Sequence
from typing import Any

from vllm import RequestOutput

from server.vllm_compat import LOGPROB_FLOOR, Logprob

Decode = Callable[[int], str]
LogprobStep = dict[int, Logprob] | None


def clamped(logprob: float) -> float:
    """vLLM's floor for a log-probability in OpenAI's shapes (-inf and NaN included)."""
    return LOGPROB_FLOOR if math.isnan(logprob) else max(logprob, LOGPROB_FLOOR)


def sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


SSE_DONE = "data: [DONE]\n\n"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    """OpenAI's usage, with the prompt tokens the engine's prefix cache served."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def outputs_usage(prompt_tokens: int, outputs: Sequence[RequestOutput]) -> dict[str, Any]:
    generated = sum(len(c.token_ids) for output in outputs for c in output.outputs)
    cached = sum(output.num_cached_tokens or 0 for output in outputs)
    return usage(prompt_tokens, generated, cached)


def prompt_logprobs(steps: Sequence[LogprobStep] | None) -> list[dict[str, Any] | None] | None:
    """vLLM's format: per prompt position, token id -> logprob, rank and text (first: None)."""
    if steps is None:
        return None
    return [
        {
            str(token_id): {
                "logprob": clamped(entry.logprob),
                "rank": entry.rank,
                "decoded_token": entry.decoded_token,
            }
            for token_id, entry in step.items()
        }
        if step
        else None
        for step in steps
    ]


def envelope(request_id: str, obj: str, model: str, created: int) -> dict[str, Any]:
    return {"id": request_id, "object": obj, "created": created, "model": model}


def _token_text(token_id: int, step: LogprobStep, decode: Decode) -> str:
    entry = step.get(token_id) if step else None
    if entry is not None and entry.decoded_token is not None:
        return entry.decoded_token
    return decode(token_id)


def _top(step: LogprobStep, token_id: int, k: int) -> list[tuple[int, Logprob]]:
    """The k most likely entries, and the sampled one, most likely first."""
    if not step:
        return []
    entries = [(i, e) for i, e in step.items() if i == token_id or (e.rank or 0) <= k]
    return sorted(entries, key=lambda item: -item[1].logprob)


def completion_logprobs(
    token_ids: Sequence[int],
    steps: Sequence[LogprobStep],
    k: int,
    decode: Decode,
    offset: int = 0,
) -> dict[str, list[Any]]:
    """The legacy completions format: tokens, token_logprobs, top_logprobs, text_offset."""
    tokens, token_logprobs, top_logprobs, text_offset = [], [], [], []
    for token_id, step in zip(token_ids, steps, strict=True):
        text = _token_text(token_id, step, decode)
        tokens.append(text)
        token_logprobs.append(clamped(step[token_id].logprob) if step else None)
        top = _top(step, token_id, k)
        top_logprobs.append(
            {_token_text(i, step, decode): clamped(e.logprob) for i, e in top} if step else None
        )
        text_offset.append(offset)
        offset += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top_logprobs,
        "text_offset": text_offset,
    }


def merge_completion_logprobs(first: dict[str, list], second: dict[str, list]) -> dict:
    return {key: first[key] + second[key] for key in first}


def chat_logprobs(
    token_ids: Sequence[int], steps: Sequence[LogprobStep], k: int, decode: Decode
) -> dict[str, list[dict[str, Any]]]:
    """The chat format: per token its text, log-probability, bytes and top alternatives."""

    def item(token_id: int, entry: Logprob, step: LogprobStep) -> dict[str, Any]:
        text = _token_text(token_id, step, decode)
        return {"token": text, "logprob": clamped(entry.logprob), "bytes": list(text.encode())}

    content = []
    for token_id, step in zip(token_ids, steps, strict=True):
        if not step:
            continue
        entry = item(token_id, step[token_id], step)
        entry["top_logprobs"] = [
            item(i, e, step) for i, e in _top(step, token_id, k) if (e.rank or 0) <= k
        ][:k]
        content.append(entry)
    return {"content": content}
