"""Structured-output constraints compiled before the engine sees them, in a process that can die.

vLLM's engine compiles a request's grammar in one worker thread (on two cores), with no time
limit: a schema that takes minutes (an enum of a few thousand strings does) holds every other
constrained request behind it. So the front end compiles each constraint first, with vLLM's
own backend and tokenizer, in a child process; one that has not compiled within the limit is
refused, and that process is killed and replaced. Only a constraint that compiled here in time
reaches the engine, which compiles it again (xgrammar caches per process) in about as long.
"""

import asyncio
import contextlib
import logging
import multiprocessing
from multiprocessing.connection import Connection
from typing import Any

logger = logging.getLogger(__name__)
READY = "ready"
START_TIMEOUT = 300.0  # a fresh compiler process imports vLLM and reads the tokenizer


class ConstraintTimeout(Exception):
    """The constraint did not compile within the limit."""


class ConstraintBusy(Exception):
    """The compiler stayed busy with other requests' constraints for the whole limit."""


class ConstraintError(ValueError):
    """The backend refused the constraint (the first line of its message)."""


def _compile_forever(connection: Connection, vllm_config: Any) -> None:
    """The child: vLLM's xgrammar backend over the served tokenizer, one constraint at a time."""
    from vllm.tokenizers.registry import cached_tokenizer_from_config
    from vllm.v1.structured_output.backend_xgrammar import XgrammarBackend
    from vllm.v1.structured_output.request import get_structured_output_key

    model_config = vllm_config.model_config
    tokenizer = cached_tokenizer_from_config(model_config=model_config)
    backend = XgrammarBackend(
        vllm_config, tokenizer=tokenizer, vocab_size=model_config.get_vocab_size()
    )
    bitmask = backend.allocate_token_bitmask(1)
    connection.send(READY)
    while True:
        constraint = connection.recv()
        try:
            grammar = backend.compile_grammar(*get_structured_output_key(constraint))
            # A schema that refers only to itself ({"$ref": "#"}) compiles, but allows no first
            # token: the engine would end the request with finish_reason "error".
            grammar.fill_bitmask(bitmask, 0)
            if not bool(bitmask.ne(0).any()):
                raise ValueError("the constraint admits no output at all (a $ref cycle?)")
        except Exception as error:  # the backend's refusal, told to the client
            lines = str(error).strip().splitlines()
            connection.send(lines[0] if lines else type(error).__name__)
        else:
            connection.send(None)


class ConstraintCompiler:
    """One compiler process, started with the server and replaced after each time-out."""

    def __init__(self, vllm_config: Any, timeout: float) -> None:
        self.vllm_config, self.timeout = vllm_config, timeout
        self._context = multiprocessing.get_context("spawn")
        self._process: Any = None
        self._connection: Connection | None = None
        self._ready = False
        self._lock = asyncio.Lock()

    def start(self) -> None:
        parent, child = self._context.Pipe()
        self._process = self._context.Process(
            target=_compile_forever,
            args=(child, self.vllm_config),
            name="resonance-constraints",
            daemon=True,
        )
        self._process.start()
        child.close()
        self._connection, self._ready = parent, False

    async def check(self, constraint: Any) -> None:
        """Compile ``constraint`` (vLLM's StructuredOutputsParams) within the time limit,
        after waiting at most as long for the compiler (`ConstraintBusy` past that)."""
        if constraint.json_object:  # vLLM's fixed grammar for any JSON object: nothing to try
            return
        try:
            await asyncio.wait_for(self._lock.acquire(), self.timeout)
        except TimeoutError:
            raise ConstraintBusy from None
        try:
            await self._check(constraint)
        finally:
            self._lock.release()

    async def _check(self, constraint: Any) -> None:
        if self._process is None or not self._process.is_alive():
            self.start()
        if not self._ready:  # a fresh process: its start is not the constraint's time
            await asyncio.to_thread(self.wait_ready)
        connection = self._connection
        connection.send(constraint)
        if not await asyncio.to_thread(connection.poll, self.timeout):
            logger.warning("a constraint took over %g s to compile; refused", self.timeout)
            self.shutdown()
            self.start()
            raise ConstraintTimeout
        refusal = connection.recv()
        if refusal is not None:
            raise ConstraintError(refusal)

    def wait_ready(self) -> None:
        """Block until the process has read the tokenizer (the server waits once at start)."""
        if self._ready:
            return
        if not self._connection.poll(START_TIMEOUT):
            self.shutdown()
            raise RuntimeError("the constraint compiler did not start")
        self._ready = self._connection.recv() == READY

    def shutdown(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.join(5)
        if self._connection is not None:
            with contextlib.suppress(OSError):
                self._connection.close()
        self._process = self._connection = None
