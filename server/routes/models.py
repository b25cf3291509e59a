"""GET /v1/models: the served model, its context and its effective RoPE settings."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from server.protocol import ModelList
from server.services import Shared

router = APIRouter()


@router.get("/v1/models", response_model=ModelList)
async def models(s: Shared) -> JSONResponse:
    info = s.engine.info
    card = {
        "id": info.name,
        "object": "model",
        "created": s.created,
        "owned_by": "resonance-serve",
        "root": info.name,  # the model's name: where it lives on disk is not the client's
        "max_model_len": info.max_model_len,
        "rope_parameters": info.rope,
    }
    return JSONResponse({"object": "list", "data": [card]})
