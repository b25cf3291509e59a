"""What the evaluations ask of an OpenAI-compatible server, over HTTP only.

Prompts go as token ids (the completions API takes them), so every prompt has exactly the
length asked for; the ids come from the server's ``/tokenize`` (this server's and vLLM's), or
from a local tokenizer (``--tokenizer``) for a server without one.
"""

from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx


class EvalError(Exception):
    """A request the server did not answer as asked (recorded in the report, not raised out)."""


@dataclass
class ServerInfo:
    model: str
    max_model_len: int | None  # None when the server does not say
    rope_policy: str | None = None  # resonance-serve's: per-request or static


class Client:
    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        tokenizer: str | None = None,
        timeout: float = 1800,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        root = base_url.rstrip("/").removesuffix("/v1")
        self.http = httpx.AsyncClient(base_url=root, headers=headers, timeout=timeout)
        self.model = model
        # resonance-serve's x-rope-table header of each answer: which RoPE table served it
        self.tables: Counter[str] = Counter()
        self.local = None
        if tokenizer:
            from transformers import AutoTokenizer

            self.local = AutoTokenizer.from_pretrained(tokenizer)

    async def close(self) -> None:
        await self.http.aclose()

    async def _request(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """The JSON answer of POST (or GET, without a body); anything else as one EvalError."""
        try:
            if body is None:
                response = await self.http.get(path)
            else:
                response = await self.http.post(path, json=body)
        except httpx.HTTPError as error:
            raise EvalError(f"{path}: {type(error).__name__}: {error}") from None
        if response.status_code != 200:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:300]
            raise EvalError(f"{path}: HTTP {response.status_code}: {message}")
        if table := response.headers.get("x-rope-table"):
            self.tables[table] += 1
        return response.json()

    async def info(self) -> ServerInfo:
        try:
            cards = (await self._request("/v1/models"))["data"]
        except (ValueError, KeyError, TypeError) as error:
            raise EvalError(f"/v1/models: unexpected answer ({error})") from None
        card = next((c for c in cards if c.get("id") == self.model), None)
        if card is None:
            names = ", ".join(str(c.get("id")) for c in cards)
            raise EvalError(f"the server does not serve {self.model!r} (it serves {names})")
        return ServerInfo(self.model, card.get("max_model_len"), card.get("rope_policy"))

    async def tokenize(self, text: str, special: bool = False) -> list[int]:
        """Token ids of ``text``; with ``special`` the tokenizer's own additions (BOS) too."""
        if self.local is not None:
            return self.local(text, add_special_tokens=special).input_ids
        body = {"model": self.model, "prompt": text, "add_special_tokens": special}
        return (await self._request("/tokenize", body))["tokens"]

    async def prompt_logprobs(self, ids: list[int]) -> list[float | None]:
        """log p(token i | tokens before it) for every prompt token (None for the first)."""
        body = {
            "model": self.model,
            "prompt": ids,
            "max_tokens": 1,
            "temperature": 0,
            "echo": True,
            "logprobs": 0,
        }
        choice = (await self._request("/v1/completions", body))["choices"][0]
        values = choice["logprobs"]["token_logprobs"][: len(ids)]
        if len(values) != len(ids):
            raise EvalError(f"{len(values)} prompt log-probabilities for {len(ids)} tokens")
        return values

    async def complete(self, ids: list[int], max_tokens: int) -> tuple[str, int]:
        """Greedy text after the prompt, and the prompt tokens the server counted."""
        body = {"model": self.model, "prompt": ids, "max_tokens": max_tokens, "temperature": 0}
        answer = await self._request("/v1/completions", body)
        return answer["choices"][0]["text"], answer["usage"]["prompt_tokens"]

    async def chat(self, text: str, max_tokens: int) -> tuple[str, int]:
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": text}],
            "max_tokens": max_tokens,
            "temperature": 0,
        }
        answer = await self._request("/v1/chat/completions", body)
        return answer["choices"][0]["message"]["content"] or "", answer["usage"]["prompt_tokens"]
