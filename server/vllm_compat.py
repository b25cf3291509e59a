"""The front end's one door into vLLM's submodules (vLLM 0.32).

Everything of vLLM that `server/` uses below the package's top-level names (``vllm.SamplingParams``,
``vllm.RequestOutput``, ``vllm.CompletionOutput``) is imported here, each with what it relies on,
so that a vLLM upgrade has one file to check. Only the modules that start vLLM's own processes
(`server.engine`, `server.constraints`) import further. Importing this module imports vLLM
(seconds): settings refusals and the CLI's first checks must not import it.
"""

import dataclasses
from typing import Any

# A tool call's id, in the format vLLM's server gives it.
from vllm.entrypoints.generate.base.protocol import make_tool_call_id

# The HTTP socket bound before the engine starts, as vLLM's server binds it.
from vllm.entrypoints.launchers.launcher import create_server_socket

# vLLM's chat request model: its tool parsers and forced-call schema builder read one.
from vllm.entrypoints.openai.chat_completion.protocol import (
    ChatCompletionRequest as VllmChatRequest,
)

# Cancels a route's handler when its client disconnects (vLLM's own server uses it).
from vllm.entrypoints.serve.utils.api_utils import with_cancellation

# Errors vLLM raises by whose fault they are; GracefulHTTPError carries its own status
# (QueueOverflowError: 503 when --engine-arg max_num_queued_reqs is reached).
from vllm.exceptions import (
    GracefulHTTPError,
    VLLMClientError,
    VLLMNotFoundError,
    VLLMServerError,
)

# Per-token log-probability entries (logprob, rank, decoded_token) in RequestOutput.
from vllm.logprobs import Logprob

# The request a LoRA adapter is named by (lora_name, lora_int_id, lora_path).
from vllm.lora.request import LoRARequest

# chat_template_kwargs filtered to what the template and apply_chat_template declare, as
# vLLM's server filters them (ValueError for "chat_template" and "tokenize").
from vllm.renderers.hf import resolve_chat_template_kwargs

# Output kinds (DELTA for streams, FINAL_ONLY otherwise) and the structured-outputs constraint
# that SamplingParams carries.
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

# Tool calls: vLLM's parsers (by name) for "auto", the JSON schema of a forced call.
from vllm.tool_parsers.abstract_tool_parser import ToolParser, ToolParserManager
from vllm.tool_parsers.utils import get_json_schema_from_tools

# Merges the output streams of a request's prompts into (index, output) pairs.
from vllm.utils.async_utils import merge_async_iterators

# The engine's per-step statistics, delivered to a stat-logger class AsyncLLM instantiates.
from vllm.v1.metrics.loggers import StatLoggerBase
from vllm.v1.metrics.stats import SchedulerStats

# The floor vLLM's server gives a log-probability in OpenAI's shapes: -inf and NaN would make
# invalid JSON (json.dumps writes -Infinity) or a 500.
LOGPROB_FLOOR = -9999.0

__all__ = [
    "LOGPROB_FLOOR",
    "GracefulHTTPError",
    "LoRARequest",
    "Logprob",
    "RequestOutputKind",
    "SchedulerStats",
    "StatLoggerBase",
    "StructuredOutputsParams",
    "ToolParser",
    "ToolParserManager",
    "VLLMClientError",
    "VLLMNotFoundError",
    "VLLMServerError",
    "VllmChatRequest",
    "create_server_socket",
    "engine_arg_names",
    "get_json_schema_from_tools",
    "is_cpu_platform",
    "make_tool_call_id",
    "merge_async_iterators",
    "resolve_chat_template_kwargs",
    "visible_cpus",
    "with_cancellation",
]


def engine_arg_names() -> set[str]:
    """The fields of vLLM's ``AsyncEngineArgs`` (``--engine-arg`` keys are checked against it)."""
    from vllm import AsyncEngineArgs

    return {f.name for f in dataclasses.fields(AsyncEngineArgs)}


def is_cpu_platform() -> bool:
    """vLLM's CPU build (its platform detection, as the engine will see it)."""
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def visible_cpus() -> tuple[list[Any], list[Any]]:
    """The CPUs (``.id``, ``.physical_core``) and NUMA nodes this process may use, read with
    the helpers vLLM's own CPU thread binding uses."""
    from vllm.utils import cpu_resource_utils

    return cpu_resource_utils.get_allowed_cpu_list(), cpu_resource_utils.get_visible_memory_node()
