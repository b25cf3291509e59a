"""The front end's one door into vLLM's submodules (vLLM 0.32).

Everything of vLLM that `server/` uses below the package's top-level names (``vllm.SamplingParams``,
``vllm.RequestOutput``, ``vllm.CompletionOutput``) is imported here, each with what it relies on,
so that a vLLM upgrade has one file to check. Only the modules that start vLLM's own processes
(`server.engine`, `server.constraints`) import further. Importing this module imports vLLM
(seconds): settings refusals and the CLI's first checks must not import it.
"""

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

# Anthropic's Messages API as vLLM's server reads it, and vLLM's translation of it onto (and
# back from) an OpenAI chat request: the request model, to_chat_completion_request (a
# classmethod), messages_full_converter and message_stream_converter (methods that read no
# state of the serving object, so one made without its engine serves).
from vllm.entrypoints.anthropic.protocol import AnthropicMessagesRequest
from vllm.entrypoints.anthropic.serving import AnthropicServingMessages

# A tool call's id, in the format vLLM's server gives it.
# OpenAI's Responses API as vLLM's server reads and answers it: the request and response
# models, the input items as chat messages (instructions, history, function_call and
# function_call_output items), the tools as chat tools, and the answer as output items.
from vllm.entrypoints.generate.base.protocol import FunctionCall, make_tool_call_id

# The HTTP socket bound before the engine starts, as vLLM's server binds it.
from vllm.entrypoints.launchers.launcher import create_server_socket

# vLLM's chat request model: its tool parsers and forced-call schema builder read one.
from vllm.entrypoints.openai.chat_completion.protocol import (
    ChatCompletionRequest as VllmChatRequest,
)

# vLLM's chat response model, which the Anthropic converters read.
from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionResponse
from vllm.entrypoints.openai.responses.protocol import (
    ResponsesRequest,
    ResponsesResponse,
    ResponseUsage,
)
from vllm.entrypoints.openai.responses.utils import (
    build_response_output_items,
    construct_input_messages,
    construct_tool_dicts,
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
    "AnthropicMessagesRequest",
    "FunctionCall",
    "GracefulHTTPError",
    "LoRARequest",
    "Logprob",
    "RequestOutputKind",
    "ResponseUsage",
    "ResponsesRequest",
    "ResponsesResponse",
    "SchedulerStats",
    "StatLoggerBase",
    "StructuredOutputsParams",
    "ToolParser",
    "ToolParserManager",
    "VLLMClientError",
    "VLLMNotFoundError",
    "VLLMServerError",
    "VllmChatRequest",
    "anthropic_to_chat",
    "build_response_output_items",
    "chat_stream_to_anthropic",
    "chat_to_anthropic",
    "construct_input_messages",
    "construct_tool_dicts",
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


_ANTHROPIC = object.__new__(AnthropicServingMessages)  # its converters, without an engine


def anthropic_to_chat(request: AnthropicMessagesRequest) -> dict[str, Any]:
    """An Anthropic Messages request as the fields of an OpenAI chat request (vLLM's mapping)."""
    chat = AnthropicServingMessages.to_chat_completion_request(request)
    return chat.model_dump(exclude_none=True, exclude_unset=True)


def chat_to_anthropic(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat completion as an Anthropic message."""
    message = _ANTHROPIC.messages_full_converter(ChatCompletionResponse.model_validate(body))
    return message.model_dump(exclude_none=True)


def chat_stream_to_anthropic(events: AsyncIterator[str]) -> AsyncIterator[str]:
    """OpenAI chat stream events (with usage in every chunk) as Anthropic's event stream."""
    return _ANTHROPIC.message_stream_converter(events)


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
