"""POST /v1/load_lora_adapter and /v1/unload_lora_adapter, as vLLM's server spells them.

Mounted only with --allow-runtime-lora; behind the API key like every non-probe route.
"""

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from server.protocol import LoadLoraRequest, UnloadLoraRequest
from server.services import Shared

router = APIRouter()


@router.post("/v1/load_lora_adapter")
async def load_lora_adapter(request: LoadLoraRequest, s: Shared) -> JSONResponse:
    adapter = await s.adapters.load(request.lora_name, request.lora_path)
    return JSONResponse({"loaded": adapter.name, "rank": adapter.rank})


@router.post("/v1/unload_lora_adapter")
async def unload_lora_adapter(request: UnloadLoraRequest, s: Shared) -> JSONResponse:
    await s.adapters.unload(request.lora_name)
    return JSONResponse({"unloaded": request.lora_name})
