"""Requests the engine can only run alone: a readers-writer lock in front of it.

vLLM 0.32 computes prompt log-probabilities with the LoRA logits path's per-request adapter
indices while the logits have one row per prompt token: with LoRA enabled, two requests in one
batch (one of them asking for prompt log-probabilities) crash the CPU engine
(``punica_cpu.add_lora_logits``: "einsum(): subscript b has size 2 ... 2046"), and on GPUs the
adapter's lm_head delta is dropped (vllm-project/vllm#16668, #29955, #51594). A batch of one is
right: its single index covers every row. So on a server with LoRA, such a request waits until
the engine holds no other request of this server and runs alone; the others wait for it. Waiting
counts against the request's deadline. Without LoRA every request shares the engine freely.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator


class EngineLanes:
    def __init__(self, exclusive_needed: bool) -> None:
        self.exclusive_needed = exclusive_needed
        self._shared = 0
        self._exclusive = False
        self._waiting_exclusive = 0
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def enter(self, alone: bool) -> AsyncIterator[None]:
        """Hold the engine, shared or (``alone`` on a server that needs it) alone."""
        if not self.exclusive_needed:
            yield
            return
        if alone:
            async with self._exclusively():
                yield
        else:
            async with self._sharing():
                yield

    @contextlib.asynccontextmanager
    async def _sharing(self) -> AsyncIterator[None]:
        async with self._changed:  # a waiting exclusive request goes first: it cannot starve
            await self._changed.wait_for(lambda: not (self._exclusive or self._waiting_exclusive))
            self._shared += 1
        try:
            yield
        finally:
            async with self._changed:
                self._shared -= 1
                self._changed.notify_all()

    @contextlib.asynccontextmanager
    async def _exclusively(self) -> AsyncIterator[None]:
        async with self._changed:
            self._waiting_exclusive += 1
            try:
                await self._changed.wait_for(lambda: not (self._exclusive or self._shared))
            finally:
                self._waiting_exclusive -= 1
                self._changed.notify_all()
            self._exclusive = True
        try:
            yield
        finally:
            async with self._changed:
                self._exclusive = False
                self._changed.notify_all()
