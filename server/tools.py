"""Tool calls: the request's tools on vLLM's own pieces, the answer in OpenAI's shape.

A named or ``required`` tool choice is forced with structured outputs over the tools' argument
schemas (vLLM's ``get_json_schema_from_tools``), so it works with any model. ``auto`` needs a
model that writes calls in a known format: vLLM's tool-call parser of ``--tool-call-parser``
finds them in the text. Nothing here parses a model's text by itself but the forced forms,
whose JSON the grammar guarantees.
"""

import json
from dataclasses import dataclass, field
from typing import Any

from server.errors import APIError
from server.protocol import ChatCompletionRequest, ChatMessage, NamedToolChoice
from server.vllm_compat import (
    ToolParser,
    ToolParserManager,
    VllmChatRequest,
    get_json_schema_from_tools,
    make_tool_call_id,
)


def parser_class(name: str | None) -> type[ToolParser] | None:
    """vLLM's parser registered under ``name``; a one-line ValueError for an unknown one."""
    if name is None:
        return None
    try:
        return ToolParserManager.get_tool_parser(name)
    except KeyError:
        known = ", ".join(ToolParserManager.list_registered())
        raise ValueError(f"tool_call_parser {name!r} is not one of vLLM's: {known}") from None


def template_message(message: ChatMessage) -> dict[str, Any]:
    """A message as chat templates read it (transformers' convention, as vLLM passes it)."""
    role = "system" if message.role == "developer" else message.role
    out: dict[str, Any] = {"role": role, "content": message.text()}
    if message.name is not None:
        out["name"] = message.name
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.function.name, "arguments": _loaded(call.function)},
            }
            for call in message.tool_calls
        ]
    return out


def _loaded(function: Any) -> Any:
    """Templates index into arguments (``arguments.city``): give them the object if it is one."""
    if not isinstance(function.arguments, str):
        return function.arguments
    try:
        return json.loads(function.arguments)
    except ValueError:
        return function.arguments
    except RecursionError:
        raise APIError(
            400, "a tool call's arguments are nested too deeply", param="messages"
        ) from None


def _as_sent(message: dict[str, Any]) -> dict[str, Any]:
    """A template message with its calls' arguments as JSON strings, as OpenAI (and vLLM's
    request model) spell them."""
    calls = message.get("tool_calls")
    if not calls:
        return message
    spelled = []
    for call in calls:
        arguments = call["function"]["arguments"]
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments, ensure_ascii=False)
        spelled.append({**call, "function": {**call["function"], "arguments": arguments}})
    return {**message, "tool_calls": spelled}


def template_tools(request: ChatCompletionRequest) -> list[dict[str, Any]] | None:
    if not request.tools or request.effective_tool_choice == "none":
        return None
    return [tool.model_dump(exclude_none=True) for tool in request.tools]


def _vllm_request(
    request: ChatCompletionRequest, messages: list[dict], tools: list[dict] | None
) -> VllmChatRequest:
    """vLLM's form of the request's tool fields, which its schema builder and parsers read."""
    choice = request.effective_tool_choice
    return VllmChatRequest.model_validate(
        {
            "model": request.model,
            "messages": [_as_sent(m) for m in messages],
            "tools": tools,
            "tool_choice": choice.model_dump() if isinstance(choice, NamedToolChoice) else choice,
            "parallel_tool_calls": request.parallel_tool_calls,
        }
    )


def _call(name: str, arguments: str, call_id: str | None = None) -> dict[str, Any]:
    return {
        "id": call_id or make_tool_call_id(),
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


@dataclass
class ChoiceState:
    """What one streamed choice has produced so far."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    calls: int = 0  # tool calls begun in the stream
    parser: ToolParser | None = None


class ToolCalls:
    """One request's tool mode, and how its outputs become OpenAI messages and deltas."""

    def __init__(
        self,
        request: ChatCompletionRequest,
        messages: list[dict[str, Any]],
        parser: type[ToolParser] | None,
        tokenizer: Any,
    ) -> None:
        choice = request.effective_tool_choice
        self.mode = "none" if not request.tools else choice
        self.name = choice.function.name if isinstance(choice, NamedToolChoice) else None
        if isinstance(self.mode, NamedToolChoice):
            self.mode = "named"
        self.schema: dict[str, Any] | None = None
        self.parser, self.tokenizer = parser, tokenizer
        self.for_template = template_tools(request)  # the tools as the chat template reads them
        self._states: dict[int, ChoiceState] = {}
        if self.mode == "none":
            return
        self.request = _vllm_request(request, messages, self.for_template)
        if self.mode in ("named", "required"):
            schema = get_json_schema_from_tools(
                self.request.tool_choice, self.request.tools, request.parallel_tool_calls
            )
            self.schema = schema if isinstance(schema, dict) else json.loads(schema)
        elif parser is None:
            raise APIError(
                400,
                "tool_choice 'auto' needs a tool-call parser for this model's format: start the "
                "server with --tool-call-parser NAME, or force a call with tool_choice "
                "'required' or a named function",
                param="tool_choice",
            )

    @property
    def skip_special_tokens(self) -> bool | None:
        """Some parsers need the special tokens that mark a call (vLLM's adjust_request)."""
        if self.mode != "auto":
            return None
        adjusted = self._new_parser().adjust_request(self.request)
        return adjusted.skip_special_tokens

    def _new_parser(self) -> ToolParser:
        return self.parser(self.tokenizer, self.request.tools)

    # ---------------------------------------------------------------- whole
    def message(self, text: str) -> tuple[str | None, list[dict[str, Any]]]:
        """The content and tool calls of a finished choice's text."""
        if self.mode == "named":
            return None, [_call(self.name, text)]
        if self.mode == "required":
            calls = _required_calls(text)
            return (None, calls) if calls else (text, [])
        if self.mode == "auto":
            info = self._new_parser().extract_tool_calls(text, self.request)
            if info.tools_called:
                calls = [
                    _call(c.function.name, c.function.arguments, c.id) for c in info.tool_calls
                ]
                return info.content or None, calls
        return text, []

    # --------------------------------------------------------------- stream
    def delta(self, index: int, text: str, token_ids: list[int], finished: bool) -> dict | None:
        """The delta of one streamed choice for this step of text; None when there is none."""
        state = self._states.setdefault(index, ChoiceState())
        if self.mode == "none":
            return {"content": text} if text else None
        previous_text, previous_ids = state.text, list(state.token_ids)
        state.text += text
        state.token_ids += token_ids
        if self.mode == "named":
            return self._named_delta(state, text)
        if self.mode == "required":
            if not finished:
                return None
            calls = _required_calls(state.text)
            state.calls = len(calls)
            if not calls:
                return {"content": state.text}
            return {"tool_calls": [{"index": i, **c} for i, c in enumerate(calls)]}
        if state.parser is None:
            state.parser = self._new_parser()
        message = state.parser.extract_tool_calls_streaming(
            previous_text, state.text, text, previous_ids, state.token_ids, token_ids, self.request
        )
        delta = message.model_dump(exclude_none=True) if message is not None else {}
        delta.pop("role", None)
        for call in delta.get("tool_calls", []):
            state.calls = max(state.calls, call["index"] + 1)
        if finished and state.calls:
            rest = state.parser.get_remaining_unstreamed_args()
            if rest:
                tail = {"index": state.calls - 1, "function": {"arguments": rest}}
                delta.setdefault("tool_calls", []).append(tail)
        return delta or None

    def _named_delta(self, state: ChoiceState, text: str) -> dict | None:
        if state.calls == 0:
            state.calls = 1
            return {"tool_calls": [{"index": 0, **_call(self.name, text)}]}
        if not text:
            return None
        return {"tool_calls": [{"index": 0, "function": {"arguments": text}}]}

    def called(self, index: int) -> bool:
        state = self._states.get(index)
        return state is not None and state.calls > 0


def _required_calls(text: str) -> list[dict[str, Any]]:
    """The grammar's array of ``{"name", "parameters"}``; nothing if it was cut short."""
    try:
        items = json.loads(text)
    except ValueError:
        return []
    if not isinstance(items, list):
        return []
    return [
        _call(item["name"], json.dumps(item.get("parameters", {}), ensure_ascii=False))
        for item in items
        if isinstance(item, dict) and isinstance(item.get("name"), str)
    ]
