"""The FastAPI application: wiring only (routers, middleware, error handlers, lifespan).

The lifespan creates the shared resources (session store, model runtime, recommender) and puts them
on app.state, where the dependencies in service.dependencies hand them to the routes.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from gru4rec import __version__
from gru4rec.foundation.errors import UserError
from service import errors
from service.batcher import Batcher
from service.engine import ModelBundle
from service.fastpath import FastPath
from service.metrics import Metrics, multiprocess_dir
from service.middleware import BodySizeLimitMiddleware, MetricsMiddleware
from service.recommender import Recommender
from service.redis_store import RedisSessionStore
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
* Large catalogues are ranked through an approximate top-k index (candidates re-scored exactly);
  `GET /v1/model` says which retrieval is in use, and `"exact": true` in a request scores every item.
"""


def _configure_torch(settings: Settings) -> None:
    """Per-process torch threads: one by default (batch-1 inference; several workers share the cores).

    Also how long a thread waiting for the GIL waits before the holder must hand it over: the
    batcher thread needs the GIL back after every PyTorch or faiss call, and while the event loop
    is busy with requests, Python's default of 5 ms would stall each of those returns that long.
    """
    import torch

    sys.setswitchinterval(settings.switch_interval_ms / 1000)

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
    runtime = ModelRuntime(settings, metrics)
    batcher = Batcher(metrics, settings.batch_max_size, settings.batch_wait_ms / 1000, settings.effective_model_thread)
    try:
        if isinstance(store, RedisSessionStore):
            await store.check()
        await runtime.start(app.state.preloaded)
        app.state.preloaded = None  # the runtime owns it now (and drops it at the next reload)
        batcher.start()
        app.state.store = store
        app.state.runtime = runtime
        app.state.recommender = Recommender(
            store, batcher, metrics, settings.max_items_per_request, settings.max_k, settings.max_session_clicks
        )
        log.info("serving model %s (%d items)", runtime.bundle.version, runtime.bundle.n_items)
        # Everything allocated so far (modules, the model) lives as long as the process: keep it out
        # of the garbage collector's full passes, which would otherwise stall requests now and then.
        gc.collect()
        gc.freeze()
        yield
    finally:
        await runtime.stop()
        batcher.close()
        await store.close()
        if multiprocess_dir():
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())


class ServiceApp(FastAPI):
    """The FastAPI app with the hot endpoints answered first by service.fastpath."""

    fast_path: FastPath

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            await self.fast_path(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def full(self, scope, receive, send) -> None:
        """The framework's own handling (routes, validation, middleware): the fast path's fallback."""
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None, bundle: ModelBundle | None = None) -> FastAPI:
    """A new app; nothing is loaded until its lifespan starts (TestClient's `with`, or uvicorn),
    except `bundle`: a model already loaded (and checked) by `gru4rec serve`, served as it is."""
    settings = settings or Settings()
    app = ServiceApp(
        title="GRU4Rec recommendations",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics = Metrics()
    app.state.preloaded = bundle
    errors.install(app)
    for router in (recommend.router, sessions.router, model.router, admin.router, health.router, demo.router):
        app.include_router(router)
    # added last = outermost: metrics see every answer, including 413s
    app.add_middleware(BodySizeLimitMiddleware, limit=settings.max_body_bytes, timeout=settings.body_timeout_s)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.fast_path = FastPath(app.state, app.full)
    _document_limits(app, settings)
    return app


def _document_limits(app: FastAPI, settings: Settings) -> None:
    """The OpenAPI schema states this service's limits on `k` and `items`, not just the hard ceilings."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = generate()
            components = schema.get("components", {}).get("schemas", {})
            for name in ("RecommendRequest", "EventRequest"):
                properties = components.get(name, {}).get("properties", {})
                if "k" in properties:
                    properties["k"]["maximum"] = settings.max_k
                for option in properties.get("items", {}).get("anyOf", []):
                    if option.get("type") == "array":
                        option["maxItems"] = settings.max_items_per_request
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def app_factory() -> FastAPI:
    """Entry point for `uvicorn --factory service.app:app_factory` (settings from the environment)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=os.environ.get("GRU4REC_LOG_LEVEL", "INFO").upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
    return create_app(Settings())
