"""What the routes share, built once per app and reached through a FastAPI dependency."""

import time
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from vllm.tool_parsers.abstract_tool_parser import ToolParser

from server.engine import Engine
from server.execution import Executor
from server.lora import Adapters
from server.middleware import ServerState
from server.prompts import PromptTokenizer
from server.sampling import Limits
from server.settings import Settings


@dataclass
class Services:
    settings: Settings
    engine: Engine
    state: ServerState
    prompts: PromptTokenizer
    executor: Executor
    limits: Limits
    adapters: Adapters
    tool_parser: type[ToolParser] | None = None  # vLLM's, for tool_choice "auto"
    created: int = field(default_factory=lambda: int(time.time()))


def services(request: Request) -> Services:
    return request.app.state.services


Shared = Annotated[Services, Depends(services)]
