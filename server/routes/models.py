"""GET /v1/models: the served model and its adapters, the context and the RoPE settings."""

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from server.protocol import ModelList
from server.services import Shared

router = APIRouter()


@router.get("/v1/models", response_model=ModelList)
async def models(s: Shared) -> JSONResponse:
    """The base model, then each LoRA adapter with the base as its parent."""
    info = s.engine.info
    card = {
        "object": "model",
        "created": s.created,
        "owned_by": "resonance-serve",
        "max_model_len": info.max_model_len,
        "rope_parameters": info.rope,
    }
    # The root is the model's name: where it lives on disk is not the client's business.
    cards = [{"id": info.name, **card, "root": info.name, "parent": None}]
    cards += [{"id": a.name, **card, "root": a.name, "parent": info.name} for a in s.adapters.all()]
    return JSONResponse({"object": "list", "data": cards})
