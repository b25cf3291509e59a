"""What the routes share, built once per app and reached through a FastAPI dependency."""

import time
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from server.engine_client import EngineClient
from server.execution import Executor
from server.lora import Adapters
from server.metrics import Metrics
from server.middleware import ServerState
from server.prompts import PromptTokenizer
from server.response_store import ResponseStore
from server.sampling import Limits
from server.settings import Settings
from server.tool_format import ToolFormat
from server.vllm_compat import ToolParser


@dataclass
class Services:
    settings: Settings
    engine: EngineClient
    state: ServerState
    metrics: Metrics
    prompts: PromptTokenizer
    executor: Executor
    limits: Limits
    adapters: Adapters
    tool_parser: type[ToolParser] | None = None  # vLLM's, for tool_choice "auto"
    tool_format: ToolFormat | None = None  # how the parser and tool template were chosen
    response_store: ResponseStore = field(default_factory=lambda: ResponseStore(0))
    created: int = field(default_factory=lambda: int(time.time()))


def services(request: Request) -> Services:
    return request.app.state.services


Shared = Annotated[Services, Depends(services)]
