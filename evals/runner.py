"""Run evaluation requests a few at a time, with a progress bar."""

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from tqdm import tqdm

Task = TypeVar("Task")
Result = TypeVar("Result")


async def gather(
    work: Callable[[Task], Awaitable[Result]],
    tasks: Sequence[Task],
    concurrency: int,
    label: str,
) -> list[Result]:
    """``work`` on every task, at most ``concurrency`` at once; results in the tasks' order."""
    slots = asyncio.Semaphore(concurrency)
    progress = tqdm(total=len(tasks), desc=label, unit="request")

    async def one(task: Task) -> Result:
        async with slots:
            result = await work(task)
        progress.update()
        return result

    try:
        return await asyncio.gather(*(one(task) for task in tasks))
    finally:
        progress.close()
