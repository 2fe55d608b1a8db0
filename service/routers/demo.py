"""The demo page (`GET /`) and the item listing it searches (`GET /v1/items`).

The page is plain HTML/JS from service/static (no build step, no external resources): search or pick
an item, click through a session, watch the recommendations follow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from service.dependencies import get_bundle
from service.engine import ModelBundle
from service.schemas import ErrorMessage
from service.settings import ID_MAX_LENGTH

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
_ASSETS = {"demo.js": "text/javascript; charset=utf-8", "demo.css": "text/css; charset=utf-8"}
_NO_CACHE = {"Cache-Control": "no-cache"}

router = APIRouter()


class CatalogueItem(BaseModel):
    item_id: str = Field(description="item id from the model's catalogue")
    count: int = Field(description="how often the item was clicked in the training data")


class ItemsResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [{"item_id": "214536502", "count": 5123}, {"item_id": "214840762", "count": 4211}],
                    "matches": 2,
                    "model_version": "20240101T000000.000000Z",
                }
            ]
        }
    )

    items: list[CatalogueItem] = Field(description="most clicked first (ties: catalogue order); at most `limit`")
    matches: int = Field(description="how many catalogue items match the query (all items without one)")
    model_version: str


@router.get(
    "/v1/items",
    response_model=ItemsResponse,
    responses={422: {"model": ErrorMessage, "description": "invalid query or limit"}},
    tags=["model"],
    summary="List catalogue items, most popular first",
)
async def list_items(
    query: str | None = Query(
        None, max_length=ID_MAX_LENGTH,
        description="only items whose id contains this text (case-insensitive); empty or left out: all items",
        examples=["2145"],
    ),
    limit: int = Query(20, ge=1, le=100, description="how many items to return (1-100)"),
    bundle: ModelBundle = Depends(get_bundle),
) -> ItemsResponse:
    """Item ids of the served model with their training click counts, for browsing and search."""
    hits, matches = await run_in_threadpool(_search, bundle, query or "", limit)  # a scan of the catalogue
    ids = bundle.catalogue.ids_of(hits.tolist())
    items = [CatalogueItem(item_id=i, count=int(c)) for i, c in zip(ids, bundle.item_counts[hits].tolist(), strict=True)]
    return ItemsResponse(items=items, matches=matches, model_version=bundle.version)


def _search(bundle: ModelBundle, query: str, limit: int) -> tuple[np.ndarray, int]:
    """The first `limit` matching items, most popular first, and how many match (no str per item)."""
    order = bundle.popular_order
    if not query:
        return order[:limit], len(order)
    hits = order[bundle.catalogue.matching(query)[order]]
    return hits[:limit], len(hits)


@router.get("/", include_in_schema=False)
async def demo_page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8", headers=_NO_CACHE)


@router.get("/static/{name}", include_in_schema=False)
async def demo_asset(name: str) -> FileResponse:
    media_type = _ASSETS.get(name)
    if media_type is None:  # a fixed list: nothing else in (or outside) the folder is served
        raise HTTPException(404, "not found")
    return FileResponse(STATIC_DIR / name, media_type=media_type, headers=_NO_CACHE)
