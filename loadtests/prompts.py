"""Prompts of exact token lengths, each with a unique start so prefix caching cannot help."""

import uuid
from collections.abc import Callable

import httpx

FILLER = " the"  # one token in LLaMA-family vocabularies; measured, not assumed


class PromptBuilder:
    """Builds text whose token count, as the server counts it, is exactly what was asked.

    Counting uses the server's ``/tokenize`` (vLLM's and this project's servers have it) or,
    given ``count``, any local tokenizer.
    """

    def __init__(self, count: Callable[[str], int], run_id: str | None = None) -> None:
        self.count = count
        self.run_id = run_id or uuid.uuid4().hex[:8]
        self._filler_units: dict[int, int] = {}  # target length -> filler units last used

    @classmethod
    def from_server(cls, client: httpx.Client, model: str) -> "PromptBuilder":
        def count(text: str) -> int:
            response = client.post("/tokenize", json={"model": model, "prompt": text})
            response.raise_for_status()
            return int(response.json()["count"])

        return cls(count)

    def build(self, length: int, index: int) -> str:
        """Text of exactly ``length`` tokens, starting with a prefix unique to (run, index)."""
        prefix = f"{index}-{self.run_id}:"  # unique from the first tokens: no shared block
        units = self._filler_units.get(length, max(length - self.count(prefix), 0))
        for _ in range(12):
            text = prefix + FILLER * units
            tokens = self.count(text)
            if tokens == length:
                self._filler_units[length] = units
                return text
            units = max(units + (length - tokens), 0)
        raise ValueError(f"could not build a prompt of exactly {length} tokens")
