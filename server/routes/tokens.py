"""POST /tokenize and /detokenize, as vLLM's server has them (used to build exact prompts).

Tokenizing is admitted and bounded like a generation request's prompt: it is the same work.
"""

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from server.errors import APIError
from server.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from server.services import Shared

router = APIRouter()


@router.post("/tokenize", response_model=TokenizeResponse)
async def tokenize(request: TokenizeRequest, s: Shared) -> JSONResponse:
    s.executor.check_model(request.model)
    ticket = s.executor.admission.admit(sequences=0)
    try:
        tokens = await s.prompts.encode(request.prompt, request.add_special_tokens)
    finally:
        ticket.release()
    body = {"tokens": tokens, "count": len(tokens), "max_model_len": s.engine.info.max_model_len}
    return JSONResponse(body)


@router.post("/detokenize", response_model=DetokenizeResponse)
async def detokenize(request: DetokenizeRequest, s: Shared) -> JSONResponse:
    """Admitted like /tokenize and decoded off the event loop; at most a context's tokens."""
    s.executor.check_model(request.model)
    limit = s.engine.info.max_model_len
    if len(request.tokens) > limit:
        message = f"at most {limit} tokens (this model's context) can be detokenized at once"
        raise APIError(400, message, param="tokens")
    if request.tokens and max(request.tokens) >= s.prompts.vocab_size:
        raise APIError(400, "token id outside the vocabulary", param="tokens")
    ticket = s.executor.admission.admit(sequences=0)
    try:
        text = await s.prompts.decode_off_loop(request.tokens)
    finally:
        ticket.release()
    return JSONResponse({"prompt": text})
