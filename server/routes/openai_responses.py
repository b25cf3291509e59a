"""POST /v1/responses: OpenAI's Responses API (the `openai` SDK's ``responses.create`` and
``responses.parse``, the openai-agents SDK's default model).

Translated onto the chat path, as `server.routes.messages` is, with vLLM's own pieces for
each end (its request and response models, input items to chat messages, tools, output
items): one request, one engine seam, the same admission, deadlines, metrics and RoPE policy
as chat. vLLM's own ``OpenAIServingResponses`` runs the engine itself (its own prompt rendering
and sampling), so mounting it would bypass that seam. Supported: string and item input,
``instructions``, function tools with ``function_call``/``function_call_output`` items,
``tool_choice``, ``text.format`` (json_schema, json_object), ``max_output_tokens``, sampling
fields, ``stream`` (the event sequence the SDKs read), usage with cached tokens, and
``previous_response_id`` with ``store`` (`server.response_store`). Not supported (400):
built-in tools (web search, files, code), images, background mode.
"""

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from server.errors import APIError
from server.middleware import key_digest
from server.protocol import ChatCompletionRequest
from server.routes.chat import serve_chat
from server.services import Services, Shared
from server.vllm_compat import (
    FunctionCall,
    ResponsesRequest,
    ResponsesResponse,
    ResponseUsage,
    VLLMClientError,
    build_response_output_items,
    construct_input_messages,
    construct_tool_dicts,
    with_cancellation,
)

router = APIRouter()
TEXT_PARTS = ("input_text", "output_text", "text")
FUNCTION_FIELDS = ("name", "description", "parameters", "strict")


def owner(raw_request: Request) -> bytes:
    """Whose stored responses a request may continue: its API key's digest."""
    scheme, _, token = raw_request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        token = raw_request.headers.get("x-api-key", "")
    return key_digest(token.strip()) if token.strip() else b""


def _text(content: Any) -> Any:
    """Responses content parts as the chat message text they hold."""
    if not isinstance(content, list):
        return content
    texts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else getattr(part, "type", None)
        if kind not in TEXT_PARTS:
            raise APIError(400, f"input parts of type {kind!r} are not supported", "input")
        texts.append(part["text"] if isinstance(part, dict) else part.text)
    return "".join(texts)


def chat_messages(request: ResponsesRequest, previous: list[dict] | None) -> list[dict]:
    try:
        messages = construct_input_messages(
            request_instructions=request.instructions,
            request_input=request.input,
            prev_msg=previous,
        )
    except (ValueError, VLLMClientError) as error:
        raise APIError(400, str(error).strip().splitlines()[0], param="input") from None
    except IndexError:  # vLLM's converter reads an output message's first content part
        raise APIError(400, "an input message item has no content", param="input") from None
    plain = json.loads(json.dumps(messages, default=lambda item: item.model_dump()))
    chat = []
    for message in plain:
        kept = {k: v for k, v in message.items() if k in ("role", "content", "tool_calls")}
        kept |= {k: message[k] for k in ("tool_call_id", "name") if message.get(k) is not None}
        kept["content"] = _text(message.get("content"))
        chat.append(kept)
    return chat


def chat_tools(request: ResponsesRequest) -> list[dict] | None:
    for tool in request.tools:
        if tool.type != "function":
            raise APIError(400, f"tools of type {tool.type!r} are not supported", "tools")
    tools = construct_tool_dicts(request.tools, request.tool_choice)
    if not tools:
        return None
    return [
        {
            "type": "function",
            "function": {
                k: v for k, v in tool["function"].items() if k in FUNCTION_FIELDS and v is not None
            },
        }
        for tool in tools
    ]


def chat_tool_choice(choice: Any) -> Any:
    if isinstance(choice, str):
        return choice
    if getattr(choice, "type", None) == "function":
        return {"type": "function", "function": {"name": choice.name}}
    raise APIError(400, "tool_choice: only none, auto, required and a function are supported")


def response_format(request: ResponsesRequest) -> dict[str, Any] | None:
    form = request.text.format if request.text is not None else None
    if form is None or form.type == "text":
        return None
    if form.type == "json_object":
        return {"type": "json_object"}
    schema = {"name": form.name, "schema": form.schema_, "strict": form.strict}
    return {"type": "json_schema", "json_schema": schema}


def chat_request(
    request: ResponsesRequest, model: str, previous: list[dict] | None
) -> ChatCompletionRequest:
    if request.background:
        raise APIError(400, "background responses are not supported", param="background")
    tools = chat_tools(request)
    fields = {
        "model": request.model or model,
        "messages": chat_messages(request, previous),
        "max_tokens": request.max_output_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "top_k": request.top_k,
        "min_p": request.min_p,
        "presence_penalty": request.presence_penalty,
        "frequency_penalty": request.frequency_penalty,
        "tools": tools,
        "tool_choice": chat_tool_choice(request.tool_choice) if tools else None,
        "parallel_tool_calls": request.parallel_tool_calls is not False,
        "response_format": response_format(request),
        "stream": bool(request.stream),
        "stream_options": {"include_usage": True} if request.stream else None,
    }
    try:
        return ChatCompletionRequest.model_validate(
            {k: v for k, v in fields.items() if v is not None}
        )
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        raise APIError(400, f"{where}: {message}", param=where or None) from None


@dataclass(frozen=True)
class Answer:
    """What the chat path produced for one Responses request."""

    content: str | None
    calls: list[dict[str, Any]]
    finish_reason: str | None
    usage: dict[str, Any] | None  # the chat usage
    model: str


@dataclass
class Turn:
    """One Responses request on its way: what it asked, what came back, and where it is kept."""

    request: ResponsesRequest
    messages: list[dict[str, Any]]
    owner: bytes
    s: Services
    id: str = field(default_factory=lambda: f"resp_{uuid.uuid4().hex}")
    created: int = field(default_factory=lambda: int(time.time()))

    def response(self, answer: Answer) -> dict[str, Any]:
        """The response as the API returns it."""
        functions = [
            FunctionCall(
                id=c["id"], name=c["function"]["name"], arguments=c["function"]["arguments"]
            )
            for c in answer.calls
        ]
        request = self.request
        output = build_response_output_items(None, answer.content, functions, tools=request.tools)
        status = "incomplete" if answer.finish_reason == "length" else "completed"
        response = ResponsesResponse(
            id=self.id,
            created_at=self.created,
            incomplete_details={"reason": "max_output_tokens"} if status == "incomplete" else None,
            instructions=request.instructions,
            metadata=request.metadata,
            model=answer.model,
            output=output,
            parallel_tool_calls=request.parallel_tool_calls is not False,
            temperature=request.temperature if request.temperature is not None else 1.0,
            tool_choice=request.tool_choice,
            tools=request.tools,
            top_p=request.top_p if request.top_p is not None else 1.0,
            background=False,
            max_output_tokens=request.max_output_tokens or self.s.limits.max_model_len,
            previous_response_id=request.previous_response_id,
            service_tier=request.service_tier,
            status=status,
            text=request.text,
            truncation=request.truncation or "disabled",
            usage=_usage(answer.usage) if answer.usage else None,
            user=request.user,
        )
        return response.model_dump(mode="json", exclude_none=True)

    def finished(self, answer: Answer) -> dict[str, Any]:
        """The response, kept for ``previous_response_id`` unless ``store`` is false."""
        if self.request.store is not False:
            said: dict[str, Any] = {"role": "assistant", "content": answer.content or ""}
            if answer.calls:
                said["tool_calls"] = answer.calls
            self.s.response_store.put(self.owner, self.id, [*self.messages, said])
        return self.response(answer)

    def whole(self, body: dict[str, Any]) -> dict[str, Any]:
        (choice,) = body["choices"]
        message = choice["message"]
        calls = message.get("tool_calls") or []
        usage = body["usage"]
        return self.finished(
            Answer(message["content"], calls, choice["finish_reason"], usage, body["model"])
        )

    async def events(self, chat_events: AsyncIterator[str]) -> AsyncIterator[str]:
        """The chat stream as the Responses API's event stream."""
        stream = EventStream(self)
        async for line in chat_events:
            for event in stream.read(line):
                yield event


def _usage(usage: dict[str, Any]) -> ResponseUsage:
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return ResponseUsage(
        input_tokens=usage["prompt_tokens"],
        input_tokens_details={"cached_tokens": cached, "cache_write_tokens": 0},
        output_tokens=usage["completion_tokens"],
        output_tokens_details={"reasoning_tokens": 0},
        total_tokens=usage["total_tokens"],
    )


class EventStream:
    """Chat chunks in, Responses events out: the text as it comes, the calls when they are
    whole, then ``response.completed`` with the finished response."""

    def __init__(self, turn: Turn) -> None:
        self.turn, self.sequence = turn, 0
        self.text, self.message_id = "", f"msg_{uuid.uuid4().hex}"
        self.text_open = False
        self.calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.model = turn.request.model or ""

    def _event(self, kind: str, **fields: Any) -> str:
        self.sequence += 1
        payload = {"type": kind, "sequence_number": self.sequence - 1, **fields}
        return f"event: {kind}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n"

    def _in_progress(self) -> dict[str, Any]:
        body = self.turn.response(Answer(None, [], None, None, self.model))
        return body | {"status": "in_progress", "output": []}

    def read(self, line: str) -> list[str]:
        if not line.startswith("data: "):
            return []
        data = line[6:].strip()
        if data == "[DONE]":
            return self._finish()
        chunk = json.loads(data)
        if "error" in chunk:
            error = chunk["error"]
            return [
                self._event(
                    "error",
                    code=error.get("code"),
                    message=error["message"],
                    param=error.get("param"),
                )
            ]
        self.model = chunk.get("model", self.model)
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        events = []
        if self.sequence == 0:
            shell = self._in_progress()
            events.append(self._event("response.created", response=shell))
            events.append(self._event("response.in_progress", response=shell))
        for choice in chunk.get("choices", []):
            delta = choice.get("delta") or {}
            if delta.get("content"):
                events += self._text_delta(delta["content"])
            for call in delta.get("tool_calls") or []:
                mine = self.calls.setdefault(call["index"], {"function": {"arguments": ""}})
                mine["id"] = call.get("id") or mine.get("id")
                function = call.get("function") or {}
                if function.get("name"):
                    mine["function"]["name"] = function["name"]
                mine["function"]["arguments"] += function.get("arguments") or ""
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return events

    def _text_delta(self, delta: str) -> list[str]:
        events = []
        where = {"item_id": self.message_id, "output_index": 0, "content_index": 0}
        if not self.text_open:
            self.text_open = True
            item = {
                "type": "message",
                "id": self.message_id,
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
            events.append(self._event("response.output_item.added", output_index=0, item=item))
            part = {"type": "output_text", "text": "", "annotations": []}
            events.append(self._event("response.content_part.added", **where, part=part))
        self.text += delta
        events.append(self._event("response.output_text.delta", **where, delta=delta, logprobs=[]))
        return events

    def _finish(self) -> list[str]:
        calls = [
            {"id": c.get("id") or f"call_{uuid.uuid4().hex}", "type": "function", **c}
            for _, c in sorted(self.calls.items())
        ]
        answer = Answer(self.text or None, calls, self.finish_reason, self.usage, self.model)
        body = self.turn.finished(answer)
        events = []
        for index, item in enumerate(body["output"]):
            if item["type"] == "message":
                text = item["content"][0]
                where = {"item_id": self.message_id, "output_index": index, "content_index": 0}
                events.append(
                    self._event(
                        "response.output_text.done", **where, text=text["text"], logprobs=[]
                    )
                )
                events.append(self._event("response.content_part.done", **where, part=text))
                item = item | {"id": self.message_id}
                body["output"][index] = item
            else:
                added = item | {"status": "in_progress", "arguments": ""}
                events.append(
                    self._event("response.output_item.added", output_index=index, item=added)
                )
                where = {"item_id": item["id"], "output_index": index}
                events.append(
                    self._event(
                        "response.function_call_arguments.delta", **where, delta=item["arguments"]
                    )
                )
                events.append(
                    self._event(
                        "response.function_call_arguments.done",
                        **where,
                        arguments=item["arguments"],
                        name=item["name"],
                    )
                )
            events.append(self._event("response.output_item.done", output_index=index, item=item))
        # vLLM's server and the SDK's stream helper end every stream with response.completed;
        # the response's status says whether it is incomplete.
        events.append(self._event("response.completed", response=body))
        return events


@router.post("/v1/responses", response_model=None)
@with_cancellation
async def create_response(request: ResponsesRequest, raw_request: Request, s: Shared) -> Response:
    key = owner(raw_request)
    previous = None
    if request.previous_response_id is not None:
        previous = s.response_store.get(key, request.previous_response_id)
        if previous is None:
            raise APIError(
                404,
                f"no stored response {request.previous_response_id!r} (responses are kept in "
                "memory, per API key, and not across restarts)",
                param="previous_response_id",
                code="response_not_found",
            )
    chat = chat_request(request, s.engine.info.name, previous)
    turn = Turn(request, [m.model_dump(exclude_none=True) for m in chat.messages], key, s)
    return await serve_chat(chat, raw_request.scope, s, whole=turn.whole, frames=turn.events)
