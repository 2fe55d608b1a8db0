"""GET /v1/model: what is being served."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from service.dependencies import get_bundle
from service.engine import ModelBundle
from service.schemas import ModelInfo

router = APIRouter(prefix="/v1", tags=["model"])


@router.get("/model", response_model=ModelInfo, summary="The served model")
async def model_info(bundle: ModelBundle = Depends(get_bundle)) -> dict[str, Any]:
    """Version, catalogue size, hyper-parameters and training summary (not the item list)."""
    return bundle.describe()
