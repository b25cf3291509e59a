"""POST /v1/messages: Anthropic's Messages API (the ``anthropic`` SDK, tools built on it).

Translated onto the chat path with vLLM's own converters, as vLLM's server serves it (its
``AnthropicServingMessages`` is a chat server with a translation at each end): the request
becomes an OpenAI chat request, `server.routes.chat.serve_chat` runs it through this server's
admission, deadlines, metrics and the engine seam, and the answer or stream is turned back.
``system``, text blocks, ``tools`` with ``tool_use``/``tool_result``, ``tool_choice``,
``stop_sequences``, ``stream`` and ``usage`` are supported; images are refused (text models).
"""

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from server.errors import APIError
from server.protocol import ChatCompletionRequest
from server.routes.chat import serve_chat
from server.services import Shared
from server.vllm_compat import (
    AnthropicMessagesRequest,
    anthropic_to_chat,
    chat_stream_to_anthropic,
    chat_to_anthropic,
    with_cancellation,
)

router = APIRouter()


def chat_request(request: AnthropicMessagesRequest) -> ChatCompletionRequest:
    fields = anthropic_to_chat(request)
    known = {k: v for k, v in fields.items() if k in ChatCompletionRequest.model_fields}
    try:
        return ChatCompletionRequest.model_validate(known)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        raise APIError(400, f"{where}: {message}", param=where or None) from None
    except ValueError as error:
        raise APIError(400, str(error)) from None


@router.post("/v1/messages", response_model=None)
@with_cancellation
async def messages(request: AnthropicMessagesRequest, raw_request: Request, s: Shared) -> Response:
    try:
        chat = chat_request(request)
    except ValueError as error:  # vLLM's translation refused it (a tool change, ...)
        raise APIError(400, str(error).strip().splitlines()[0]) from None
    return await serve_chat(
        chat, raw_request.scope, s, whole=chat_to_anthropic, frames=chat_stream_to_anthropic
    )
