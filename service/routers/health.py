"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from service.dependencies import get_metrics, get_store
from service.metrics import CONTENT_TYPE, Metrics
from service.schemas import Health, Readiness
from service.errors import SessionStoreError
from service.sessions import SessionStore

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, summary="Liveness")
async def healthz() -> Health:
    """The process is up and its event loop answers."""
    return Health(status="ok")


@router.get(
    "/readyz", response_model=Readiness, responses={503: {"model": Readiness, "description": "not ready"}}, summary="Readiness"
)
async def readyz(request: Request, store: SessionStore = Depends(get_store)) -> JSONResponse:
    """A model is loaded and the session store answers; 503 otherwise (take the instance out of rotation)."""
    runtime = request.app.state.runtime
    version = runtime.bundle.version if runtime.bundle is not None else None
    store_ok = await store.ping()
    ready = version is not None and store_ok
    body = Readiness(
        status="ready" if ready else "not ready",
        model_version=version,
        session_store=store.kind if store_ok else f"{store.kind} unreachable",
    )
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
    summary="Prometheus metrics",
)
async def metrics(store: SessionStore = Depends(get_store), metrics: Metrics = Depends(get_metrics)) -> Response:
    """Request counts and latency per endpoint, unknown-item rate, session store size and evictions, model version."""
    try:
        metrics.sessions.set(await store.size())
    except SessionStoreError:
        pass  # keep the last value; /readyz reports the store
    return Response(await run_in_threadpool(metrics.render), media_type=CONTENT_TYPE)
