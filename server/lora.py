"""LoRA adapters: each a model of its own, named by the request's ``model``, run by vLLM.

An adapter is checked here before vLLM loads it (a folder with ``adapter_config.json``, a rank
within the engine's limit), then loaded with vLLM's ``add_lora`` and only then listed, so a
refused or failed load leaves nothing behind. It runs on the base model's RoPE scaling.
"""

import asyncio
import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.errors import APIError
from server.vllm_compat import LoRARequest

MAX_CONFIG_BYTES = 1 << 20  # an adapter_config.json is a few hundred bytes


@dataclass(frozen=True)
class Adapter:
    name: str
    path: str
    rank: int
    request: LoRARequest


class Adapters:
    def __init__(self, engine: Any, load_timeout: float = 120.0) -> None:
        self.engine, self.load_timeout = engine, load_timeout
        self._loaded: dict[str, Adapter] = {}
        self._next_id = 1
        self._lock = asyncio.Lock()

    @property
    def max_rank(self) -> int | None:
        """The engine's limit; None when it serves no adapters."""
        return self.engine.max_lora_rank

    def get(self, name: str) -> Adapter | None:
        return self._loaded.get(name)

    def all(self) -> list[Adapter]:
        return list(self._loaded.values())

    async def load(self, name: str, path: str) -> Adapter:
        async with self._lock:
            if name == self.engine.info.name or name in self._loaded:
                raise APIError(400, f"a model named {name!r} is served already", param="lora_name")
            if self.max_rank is None:
                raise APIError(400, "this server was started without LoRA", param="lora_name")
            rank = await asyncio.to_thread(self._rank, path)
            request = LoRARequest(name, self._next_id, str(Path(path).resolve()))
            try:
                await asyncio.wait_for(self.engine.add_lora(request), self.load_timeout)
            except TimeoutError:
                with contextlib.suppress(Exception):  # whatever the worker did meanwhile
                    await asyncio.wait_for(self.engine.remove_lora(request.lora_int_id), 5)
                self._next_id += 1
                message = f"the adapter did not load within {self.load_timeout:g} s"
                raise APIError(400, message, param="lora_path", code="lora_load_timeout") from None
            except Exception as error:  # vLLM's worker could not read it: nothing was added
                lines = str(error).strip().splitlines()
                message = lines[0] if lines else type(error).__name__
                message = f"the adapter could not be loaded: {message}"
                raise APIError(400, message, param="lora_path") from None
            self._next_id += 1
            adapter = Adapter(name, path, rank, request)
            self._loaded[name] = adapter
            return adapter

    async def unload(self, name: str) -> None:
        async with self._lock:
            adapter = self._loaded.get(name)
            if adapter is None:
                raise APIError(
                    404, f"no adapter named {name!r} is loaded", "lora_name", "model_not_found"
                )
            await self.engine.remove_lora(adapter.request.lora_int_id)
            del self._loaded[name]

    def _rank(self, path: str) -> int:
        """The adapter's rank, read in a thread; only regular files are opened (a FIFO or a
        device would block the reader, here or in vLLM's worker, for good)."""
        folder = Path(path)
        try:
            entries = list(folder.iterdir()) if folder.is_dir() else []
            irregular = [e.name for e in entries if not (e.is_file() or e.is_dir())]
            size = (folder / "adapter_config.json").stat().st_size
        except OSError:
            message = f"no adapter at {path} (no adapter_config.json)"
            raise APIError(400, message, param="lora_path") from None
        if irregular:
            message = f"the adapter folder holds files that are not regular files: {irregular[0]}"
            raise APIError(400, message, param="lora_path")
        if size > MAX_CONFIG_BYTES:
            raise APIError(400, "adapter_config.json is too large", param="lora_path")
        config_file = folder / "adapter_config.json"
        try:
            config = json.loads(config_file.read_text())
        except OSError:
            message = f"no adapter at {path} (no adapter_config.json)"
            raise APIError(400, message, param="lora_path") from None
        except ValueError:
            raise APIError(400, f"{config_file} is not valid JSON", "lora_path") from None
        rank = config.get("r")
        if not isinstance(rank, int) or rank < 1:
            raise APIError(400, f"{config_file} gives no rank r", "lora_path")
        if rank > self.max_rank:
            raise APIError(
                400,
                f"the adapter's rank {rank} is above this server's --max-lora-rank {self.max_rank}",
                param="lora_path",
            )
        return rank
