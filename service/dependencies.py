"""FastAPI dependencies handing out what the lifespan created (async: no threadpool hop)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from fastapi import Header, HTTPException, Request

from service.engine import ModelBundle
from service.metrics import Metrics
from service.recommender import Recommender
from service.runtime import ModelRuntime
from service.sessions import SessionStore


async def get_runtime(request: Request) -> ModelRuntime:
    return request.app.state.runtime


async def get_bundle(request: Request) -> ModelBundle:
    """The model this request uses from start to end, whatever reloads happen meanwhile."""
    return request.app.state.runtime.bundle


async def get_recommender(request: Request) -> Recommender:
    return request.app.state.recommender


@dataclass(frozen=True, slots=True)
class Serving:
    """What a recommendation request needs: the model it started with and the recommender."""

    bundle: ModelBundle
    recommender: Recommender


async def get_serving(request: Request) -> Serving:
    """One dependency for the hot paths (each dependency level costs FastAPI some microseconds).

    The bundle is read once here: the request keeps this model whatever reloads happen meanwhile.
    """
    state = request.app.state
    return Serving(state.runtime.bundle, state.recommender)


async def get_store(request: Request) -> SessionStore:
    return request.app.state.store


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def require_api_key(
    request: Request,
    x_api_key: str | None = Header(None, description="must equal GRU4REC_API_KEY"),
) -> None:
    """404 when admin endpoints are disabled (no key configured), 401 without a key, 403 for a wrong one."""
    configured = request.app.state.settings.api_key
    if configured is None:
        raise HTTPException(404, "admin endpoints are disabled: set GRU4REC_API_KEY to enable them")
    if not x_api_key:
        raise HTTPException(401, "missing X-API-Key header", headers={"WWW-Authenticate": "X-API-Key"})
    if not secrets.compare_digest(x_api_key.encode(), configured.get_secret_value().encode()):
        raise HTTPException(403, "wrong API key")
