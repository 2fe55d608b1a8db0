"""The FastAPI application: wiring only (routers, middleware, error handlers, lifespan).

The lifespan creates the shared resources (session store, model runtime, recommender) and puts them
on app.state, where the dependencies in service.dependencies hand them to the routes.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from gru4rec import __version__
from gru4rec.foundation.errors import UserError
from service import errors
from service.metrics import Metrics, multiprocess_dir
from service.middleware import BodySizeLimitMiddleware, MetricsMiddleware
from service.recommender import Recommender
from service.routers import admin, demo, health, model, recommend, sessions
from service.runtime import ModelRuntime
from service.sessions import make_store
from service.settings import Settings

log = logging.getLogger(__name__)

DESCRIPTION = """\
Session-based next-item recommendations from a GRU4Rec model.

* `POST /v1/recommend`: top-k for a session's clicks (stateless), or for a session whose GRU state the
  service keeps (`session_id`).
* `POST /v1/sessions/{session_id}/events`: one click in, recommendations out (the fast path).
* Item ids are strings; integer ids in requests are read as their decimal string. Unknown items are
  skipped and reported; a session without known items gets the most popular items.
"""


def _configure_torch(settings: Settings) -> None:
    """Per-process torch threads: one by default (batch-1 inference; several workers share the cores)."""
    import torch

    torch.set_num_threads(settings.effective_torch_threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already fixed for this process (e.g. a second app in the same process)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    metrics: Metrics = app.state.metrics
    if settings.model_dir is None:
        raise UserError("no model: set GRU4REC_MODEL_DIR (or pass MODEL_DIR to `gru4rec serve`)")
    _configure_torch(settings)
    store = make_store(settings, metrics.on_evict)
    runtime = ModelRuntime(settings.model_dir, metrics, settings.reload_poll_s, settings.warmup_steps)
    try:
        await runtime.start()
        app.state.store = store
        app.state.runtime = runtime
        app.state.recommender = Recommender(
            store, metrics, settings.max_items_per_request, settings.max_k, settings.max_session_clicks
        )
        log.info("serving model %s (%d items)", runtime.bundle.version, runtime.bundle.n_items)
        # Everything allocated so far (modules, the model) lives as long as the process: keep it out
        # of the garbage collector's full passes, which would otherwise stall requests now and then.
        gc.collect()
        gc.freeze()
        yield
    finally:
        await runtime.stop()
        store.close()
        if multiprocess_dir():
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new app; nothing is loaded until its lifespan starts (TestClient's `with`, or uvicorn)."""
    settings = settings or Settings()
    app = FastAPI(
        title="GRU4Rec recommendations",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics = Metrics()
    errors.install(app)
    for router in (recommend.router, sessions.router, model.router, admin.router, health.router, demo.router):
        app.include_router(router)
    # added last = outermost: metrics see every answer, including 413s
    app.add_middleware(BodySizeLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def app_factory() -> FastAPI:
    """Entry point for `uvicorn --factory service.app:app_factory` (settings from the environment)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=os.environ.get("GRU4REC_LOG_LEVEL", "INFO").upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    return create_app(Settings())
