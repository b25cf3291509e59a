"""Teacher-forced next-token accuracy of a served PosGen model, over HTTP only.

Each test sequence x_0 .. x_{L-1} goes to /v1/completions as token ids without its last token,
with ``echo``, ``logprobs: 1``, ``max_tokens: 1`` and greedy sampling: entry l of the answer's
``top_logprobs`` is the model's best guess for token l given tokens 0 .. l-1 (the prompt's own
entries for l < L-1, the one generated token's for l = L-1), so a served length of L scores all
of them. The guess is right when the top-1 token is x_l.
"""

from collections.abc import Sequence
from typing import Any

import httpx

PROMPTS_PER_REQUEST = 32


def correct_by_position(logprobs: dict[str, Any], expected: Sequence[int]) -> list[bool | None]:
    """For each position, whether the top-1 token is the expected one (None at position 0)."""
    tops = logprobs["top_logprobs"]
    if len(tops) != len(expected):
        raise ValueError(f"{len(tops)} log-probability entries for {len(expected)} tokens")
    marks: list[bool | None] = [None]
    for top, token in zip(tops[1:], expected[1:], strict=True):
        marks.append(max(top, key=top.get) == str(token))
    return marks


def accuracy(marks: Sequence[Sequence[bool | None]], start: int, stop: int) -> float:
    """Share of right guesses over positions start .. stop-1 of every sequence."""
    hits = [m for row in marks for m in row[start:stop]]
    return sum(bool(m) for m in hits) / len(hits)


def score(
    base_url: str, model: str, sequences: Sequence[Sequence[int]], progress: Any = None
) -> list[list[bool | None]]:
    """Marks of every sequence, PROMPTS_PER_REQUEST prompts a request."""
    marks = []
    with httpx.Client(base_url=base_url, timeout=600) as http:
        for start in range(0, len(sequences), PROMPTS_PER_REQUEST):
            batch = sequences[start : start + PROMPTS_PER_REQUEST]
            body = {
                "model": model,
                "prompt": [list(s[:-1]) for s in batch],
                "max_tokens": 1,
                "temperature": 0,
                "echo": True,
                "logprobs": 1,
            }
            response = http.post("/v1/completions", json=body)
            response.raise_for_status()
            choices = sorted(response.json()["choices"], key=lambda c: c["index"])
            for choice, expected in zip(choices, batch, strict=True):
                marks.append(correct_by_position(choice["logprobs"], expected))
            if progress is not None:
                progress.update(len(batch))
    return marks


def summary(marks: Sequence[Sequence[bool | None]], trained: int, prefix: int) -> dict[str, Any]:
    """In-distribution (targets prefix .. trained-1) and out-of-distribution accuracy."""
    length = len(marks[0])
    return {
        "id_accuracy": accuracy(marks, prefix, trained),
        "ood_accuracy": accuracy(marks, trained, length),
        "by_position": [None if p < prefix else accuracy(marks, p, p + 1) for p in range(length)],
    }
