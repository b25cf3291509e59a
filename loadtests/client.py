"""One streamed request, timed from the client's side."""

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx


@dataclass
class RequestRecord:
    load: str  # "concurrency" or "request_rate"
    load_value: float
    prompt_tokens: int  # what was asked for
    index: int
    start_s: float  # since the level began
    ok: bool = False
    error_kind: str = ""  # "http_429", "timeout", "connection", "stream_error", ...
    error: str = ""
    served_prompt_tokens: int = 0  # what the server counted (usage)
    cached_tokens: int | None = None  # of those, served from its prefix cache, if it says
    rope_table: str = ""  # resonance-serve's x-rope-table: the RoPE table(s) that served it
    output_tokens: int = 0
    ttft_ms: float | None = None
    e2e_ms: float | None = None
    tpot_ms: float | None = None
    itl_ms: list[float] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        """A CSV row: inter-token latencies summarised by their mean."""
        row = asdict(self)
        itl = row.pop("itl_ms")
        row["itl_mean_ms"] = sum(itl) / len(itl) if itl else None
        return row


def request_body(endpoint: str, model: str, prompt: str, output_tokens: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": output_tokens,
        "temperature": 0,
        "ignore_eos": True,  # fixed output length (vLLM's extension of the API)
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if endpoint == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    return body


def delta_text(chunk: dict[str, Any]) -> str:
    choice = chunk["choices"][0]
    if "delta" in choice:
        return choice["delta"].get("content") or ""
    return choice.get("text") or ""


async def send(
    client: httpx.AsyncClient,
    endpoint: str,
    body: dict[str, Any],
    record: RequestRecord,
    collect: list[str] | None = None,
    headers: dict[str, str] | None = None,
) -> RequestRecord:
    """Send one request and fill ``record`` from its stream (its text into ``collect``)."""
    path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
    start = time.perf_counter()
    last = None
    try:
        async with client.stream("POST", path, json=body, headers=headers) as response:
            if response.status_code != 200:
                await response.aread()
                record.error_kind = f"http_{response.status_code}"
                record.error = response.text[:200]
                return record
            record.rope_table = response.headers.get("x-rope-table", "")
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    record.error_kind, record.error = "stream_error", str(chunk["error"])[:200]
                    return record
                if usage := chunk.get("usage"):
                    record.served_prompt_tokens = usage["prompt_tokens"]
                    record.output_tokens = usage["completion_tokens"]
                    details = usage.get("prompt_tokens_details") or {}
                    record.cached_tokens = details.get("cached_tokens")
                if chunk.get("choices") and (text := delta_text(chunk)):
                    if collect is not None:
                        collect.append(text)
                    now = time.perf_counter()
                    if last is None:
                        record.ttft_ms = (now - start) * 1000
                    else:
                        record.itl_ms.append((now - last) * 1000)
                    last = now
    except httpx.TimeoutException as error:
        record.error_kind, record.error = "timeout", str(error)[:200]
        return record
    except httpx.HTTPError as error:
        record.error_kind, record.error = "connection", str(error)[:200]
        return record
    except (json.JSONDecodeError, KeyError, IndexError) as error:
        record.error_kind, record.error = "bad_response", str(error)[:200]
        return record
    end = time.perf_counter()
    record.e2e_ms = (end - start) * 1000
    if record.ttft_ms is None:
        record.error_kind, record.error = "no_output", "the stream carried no text"
        return record
    if record.output_tokens > 1:
        record.tpot_ms = (record.e2e_ms - record.ttft_ms) / (record.output_tokens - 1)
    record.ok = True
    return record
