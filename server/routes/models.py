"""GET /v1/models: the served model and its adapters, the context and the RoPE settings;
the same facts at the paths routers probe."""

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
        "trained_context": info.trained_context,
        "rope_policy": info.rope_policy.name,
    }
    # The root is the model's name: where it lives on disk is not the client's business.
    cards = [{"id": info.name, **card, "root": info.name, "parent": None}]
    cards += [{"id": a.name, **card, "root": a.name, "parent": info.name} for a in s.adapters.all()]
    return JSONResponse({"object": "list", "data": cards})


@router.get("/server_info")
@router.get("/get_server_info")
@router.get("/model_info")
@router.get("/get_model_info")
async def server_info(s: Shared) -> JSONResponse:
    """What routers probe for (sglang-router, vllm-router's kv-aware policy): the served
    model's name (never its path on disk), context and RoPE settings."""
    info = s.engine.info
    return JSONResponse(
        {
            "model_path": info.name,
            "served_model_name": info.name,
            "tokenizer_path": info.name,
            "is_generation": True,
            "max_model_len": info.max_model_len,
            "rope_parameters": info.rope,
            "trained_context": info.trained_context,
            "rope_policy": info.rope_policy.name,
        }
    )
