"""POST /v1/recommend: recommendations for a whole session history, with or without stored state."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from service.dependencies import Serving, get_serving
from service.recommender import Filters
from service.schemas import ERRORS, RecommendRequest, RecommendResponse

router = APIRouter(prefix="/v1", tags=["recommendations"])


@router.post(
    "/recommend",
    response_model=RecommendResponse,
    responses={**ERRORS, 404: {"description": "session_id not known and no items given"}},
    summary="Recommend the next items for a session",
)
async def recommend(
    body: RecommendRequest,
    serving: Serving = Depends(get_serving),
) -> Response:
    """Top-k next items after the session's clicks.

    * only `items`: stateless, the clicks are replayed through the GRU;
    * `session_id` (+ `items`): the service keeps the session's GRU state, so only clicks it has not
      seen yet are processed; without `items` the stored session is asked again.

    Unknown item ids are skipped and listed in `unknown_items`; a session without any known item gets
    the most popular items (`source: popularity`). On large catalogues the top-k comes from an
    approximate index (see `GET /v1/model`); `exact: true` scores every item instead.
    """
    filters = Filters(body.k, body.exclude_seen, body.exclude, body.include, body.exact)
    content = await serving.recommender.recommend(serving.bundle, body.items, body.session_id, filters)
    return Response(content, media_type="application/json")
