"""Administrative endpoints, enabled only when GRU4REC_API_KEY is set."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.dependencies import get_runtime, require_api_key
from service.runtime import ModelRuntime
from service.schemas import ReloadResponse

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(require_api_key)])


@router.post(
    "/reload",
    response_model=ReloadResponse,
    responses={
        401: {"description": "no X-API-Key header"},
        403: {"description": "wrong API key"},
        404: {"description": "admin endpoints disabled (no GRU4REC_API_KEY)"},
        409: {"description": "the checkpoint directory cannot be loaded; the old model is still served"},
    },
    summary="Load the checkpoint directory again",
)
async def reload_model(runtime: ModelRuntime = Depends(get_runtime)) -> ReloadResponse:
    """Swap in the model now in the checkpoint directory. Requests in flight finish on the old one.

    With several workers this reloads the worker that answers; the others follow within
    GRU4REC_RELOAD_POLL_S seconds by watching the directory.
    """
    result = await runtime.reload()
    return ReloadResponse(previous_version=result.previous_version, model_version=result.model_version, changed=result.changed)
