"""Load shapes: a fixed number of clients (concurrency) or a Poisson arrival rate."""

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
from tqdm import tqdm

from loadtests.client import RequestRecord, request_body, send


@dataclass
class Level:
    load: str  # "concurrency" or "request_rate"
    value: float
    prompt_tokens: int | tuple[int, ...]  # several: a mixed workload, request i the i-th

    def length(self, index: int) -> int:
        """The prompt length of the level's request ``index``."""
        if isinstance(self.prompt_tokens, int):
            return self.prompt_tokens
        return self.prompt_tokens[index % len(self.prompt_tokens)]

    @property
    def label(self) -> int | str:
        if isinstance(self.prompt_tokens, int):
            return self.prompt_tokens
        return "+".join(map(str, self.prompt_tokens))


@dataclass
class Workload:
    endpoint: str
    model: str
    output_tokens: int
    num_requests: int
    duration_s: float
    prompt: Callable[[int, int], str]  # (prompt tokens, request index) -> text
    seed: int = 0


async def run_level(
    client: httpx.AsyncClient, work: Workload, level: Level, first_index: int
) -> tuple[list[RequestRecord], float]:
    """Run one level until ``num_requests`` were sent or ``duration_s`` passed.

    Requests already sent when time is up still finish; their records count.
    """
    started = time.perf_counter()
    deadline = started + work.duration_s
    records: list[RequestRecord] = []
    progress = tqdm(
        total=work.num_requests,
        desc=f"{level.load}={level.value:g} prompt={level.label}",
        unit="req",
        leave=False,
    )

    async def one(i: int) -> None:
        length = level.length(i)
        record = RequestRecord(
            level.load, level.value, length, first_index + i, time.perf_counter() - started
        )
        text = await asyncio.to_thread(work.prompt, length, first_index + i)
        body = request_body(work.endpoint, work.model, text, work.output_tokens)
        records.append(await send(client, work.endpoint, body, record))
        progress.update()

    if level.load == "concurrency":
        counter = iter(range(work.num_requests))

        async def worker() -> None:
            for i in counter:
                if time.perf_counter() >= deadline:
                    return
                await one(i)

        await asyncio.gather(*(worker() for _ in range(int(level.value))))
    else:
        rng = random.Random(work.seed)
        tasks = []
        for i in range(work.num_requests):
            if time.perf_counter() >= deadline:
                break
            tasks.append(asyncio.create_task(one(i)))
            await asyncio.sleep(rng.expovariate(level.value))
        await asyncio.gather(*tasks)
    progress.close()
    return records, time.perf_counter() - started


async def warm_up(client: httpx.AsyncClient, work: Workload, prompt_tokens: int, count: int):
    """Requests that are sent and awaited but not counted (their indexes are negative)."""
    for i in range(count):
        text = await asyncio.to_thread(work.prompt, prompt_tokens, -1 - i)
        record = RequestRecord("warmup", 0, prompt_tokens, -1 - i, 0.0)
        await send(client, work.endpoint, request_body(work.endpoint, work.model, text, 4), record)
