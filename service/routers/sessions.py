"""Session resources: one click in, recommendations out (the fast path); forgetting a session."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Path, Response

from service.dependencies import Serving, get_recommender, get_serving
from service.recommender import Filters, Recommender
from service.schemas import ERRORS, SESSION_ID_RULE, EventRequest, RecommendResponse

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])

SessionIdPath = Path(..., **SESSION_ID_RULE, examples=["s-42"])


@router.post(
    "/{session_id}/events",
    response_model=RecommendResponse,
    responses=ERRORS,
    summary="Record one click and get recommendations",
)
async def add_event(
    body: EventRequest,
    session_id: str = SessionIdPath,
    serving: Serving = Depends(get_serving),
) -> Response:
    """Advance the session's stored GRU state by one step with `item_id` and return the top-k.

    A new session id starts a new session. An unknown item leaves the state as it was and is listed
    in `unknown_items`.
    """
    filters = Filters(body.k, body.exclude_seen, body.exclude, body.include, body.exact)
    content = await serving.recommender.click(serving.bundle, session_id, body.item_id, filters)
    return Response(content, media_type="application/json")


@router.delete(
    "/{session_id}", status_code=204, responses={404: {"description": "no such session"}}, summary="Forget a session"
)
async def delete_session(
    session_id: str = SessionIdPath, recommender: Recommender = Depends(get_recommender)
) -> Response:
    """Drop the session's state and clicks (e.g. on logout)."""
    if not await recommender.forget(session_id):
        raise HTTPException(404, f"session {session_id!r} is not known (never seen, expired or already deleted)")
    return Response(status_code=204)
