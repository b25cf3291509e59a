"""The passkey test: a five-digit key hidden in filler text at a chosen depth, asked for at the end.

The prompt is the common one (Mohtashami and Jaggi's landmark-attention test, as YaRN and
LongLoRA use it), built from token ids so that its length is exact: instructions, filler up to
the requested length with the key sentence inserted after ``depth`` of the filler, then the
question. Scored two ways: exact match of greedy generation, and graded, by the
log-probability the model gives the true key after the question and its rank among
``candidates`` random other keys (which separates methods on models too small to answer).
"""

import random
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from evals.client import Client, EvalError
from evals.runner import gather

INSTRUCTIONS = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize "
    "it. I will quiz you about the important information there.\n\n"
)
FILLER = (
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
)
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = "\n\nWhat is the pass key? The pass key is"
ANSWER_TOKENS = 8


@dataclass
class Parts:
    """The prompt's pieces as token ids (the needle's depend on the key)."""

    instructions: list[int]
    filler: list[int]
    question: list[int]


@dataclass
class Sample:
    length: int
    depth: float
    index: int
    key: str
    key_position: int = 0  # token index where the key sentence starts
    prompt_tokens: int = 0  # as the server counted them
    answer: str = ""
    correct: bool = False
    key_logprob: float | None = None
    rank: int | None = None  # 1: the true key is the most likely of the candidates
    candidates: int = 0
    error: str = ""

    def record(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Prompt:
    ids: list[int]
    key_position: int
    text: str = field(default="", repr=False)  # for chat: the same prompt as text


async def prepare(client: Client, longest: int) -> Parts:
    instructions = await client.tokenize(INSTRUCTIONS, special=True)
    question = await client.tokenize(QUESTION)
    unit = await client.tokenize(FILLER * 8)
    filler = unit * (longest // max(len(unit), 1) + 1)
    return Parts(instructions, filler[:longest], question)


async def build(client: Client, parts: Parts, length: int, depth: float, key: str) -> Prompt:
    needle = await client.tokenize(" " + NEEDLE.format(key=key))
    room = length - len(parts.instructions) - len(needle) - len(parts.question)
    if room < 0:
        raise EvalError(f"a passkey prompt needs more than {length} tokens")
    cut = round(depth * room)
    ids = [
        *parts.instructions,
        *parts.filler[:cut],
        *needle,
        *parts.filler[cut:room],
        *parts.question,
    ]
    return Prompt(ids, len(parts.instructions) + cut)


def chat_text(length: int, depth: float, key: str, chars_per_token: float) -> str:
    """The same prompt as text (chat templates take text), sized from the filler's density."""
    room = max(int(length * chars_per_token) - len(INSTRUCTIONS) - len(QUESTION) - 60, 0)
    filler = (FILLER * (room // len(FILLER) + 1))[:room]
    cut = filler.rfind(". ", 0, round(depth * room)) + 2 if depth > 0 else 0
    return INSTRUCTIONS + filler[:cut] + NEEDLE.format(key=key) + filler[cut:] + QUESTION


def random_keys(seed: str, count: int, exclude: str) -> list[str]:
    rng = random.Random(seed)
    keys: list[str] = []
    while len(keys) < count:
        key = str(rng.randint(10000, 99999))
        if key != exclude and key not in keys:
            keys.append(key)
    return keys


def first_number(text: str) -> str:
    found = re.search(r"\d+", text)
    return found.group(0) if found else ""


async def key_logprob(client: Client, prompt: list[int], key: str) -> float:
    """log p(key | prompt): the key's tokens appended, their prompt log-probabilities summed."""
    key_ids = await client.tokenize(" " + key)
    values = await client.prompt_logprobs(prompt + key_ids)
    tail = values[-len(key_ids) :]
    if any(v is None for v in tail):
        raise EvalError("the server gave no log-probability for the key")
    return sum(tail)


async def run(
    client: Client,
    lengths: list[int],
    depths: list[float],
    samples: int,
    candidates: int,
    endpoint: str,
    seed: int,
    concurrency: int,
) -> list[Sample]:
    parts = await prepare(client, max(lengths))
    filler_text_tokens = len(await client.tokenize(FILLER * 8))
    chars_per_token = len(FILLER * 8) / max(filler_text_tokens, 1)
    plan = [(length, depth, i) for length in lengths for depth in depths for i in range(samples)]

    async def score(task: tuple[int, float, int]) -> Sample:
        length, depth, index = task
        key_seed = f"{seed}-{length}-{depth}-{index}"  # str seeds are stable across runs
        key = random_keys(key_seed, 1, "")[0]
        sample = Sample(length, depth, index, key)
        try:
            prompt = await build(client, parts, length, depth, key)
            sample.key_position = prompt.key_position
            if endpoint == "chat":
                text = chat_text(length, depth, key, chars_per_token)
                sample.answer, sample.prompt_tokens = await client.chat(text, ANSWER_TOKENS)
            else:
                sample.answer, sample.prompt_tokens = await client.complete(
                    prompt.ids, ANSWER_TOKENS
                )
            sample.correct = first_number(sample.answer) == key
            sample.key_logprob = await key_logprob(client, prompt.ids, key)
            if candidates:
                others = random_keys(key_seed + "-candidates", candidates, key)
                scores = [await key_logprob(client, prompt.ids, other) for other in others]
                sample.rank = 1 + sum(score > sample.key_logprob for score in scores)
                sample.candidates = candidates
        except EvalError as error:
            sample.error = str(error)
        return sample

    return await gather(score, plan, concurrency, "passkey")


def summarize(samples: list[Sample]) -> dict[str, Any]:
    cells = []
    for length in sorted({s.length for s in samples}):
        for depth in sorted({s.depth for s in samples}):
            group = [s for s in samples if s.length == length and s.depth == depth]
            done = [s for s in group if not s.error]
            logprobs = [s.key_logprob for s in done if s.key_logprob is not None]
            ranks = [s.rank for s in done if s.rank is not None]
            cells.append(
                {
                    "length": length,
                    "depth": depth,
                    "samples": len(group),
                    "errors": len(group) - len(done),
                    "accuracy": sum(s.correct for s in done) / len(done) if done else None,
                    "mean_key_logprob": sum(logprobs) / len(logprobs) if logprobs else None,
                    "mean_rank": sum(ranks) / len(ranks) if ranks else None,
                    "top1_of_candidates": sum(r == 1 for r in ranks) / len(ranks)
                    if ranks
                    else None,
                }
            )
    return {"cells": cells}
