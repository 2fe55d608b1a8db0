"""Running the service: check the model and settings up front, then hand over to uvicorn.

`gru4rec serve` calls `serve`; every worker process builds its app with `service.app.app_factory`
from the GRU4REC_* environment, which is why the options travel there.
"""

from __future__ import annotations

import atexit
import gc
import logging
import os
import shutil
import tempfile
from pathlib import Path

import pydantic
import uvicorn

from gru4rec.foundation.errors import UserError
from gru4rec.model.checkpoint import read_metadata
from service.http_protocol import JoinedWritesProtocol
from service.settings import Settings

log = logging.getLogger("gru4rec.serve")


def load_settings() -> Settings:
    """Settings from the environment; a bad value is a one-line error naming its variable."""
    try:
        return Settings()
    except pydantic.ValidationError as exc:
        problems = "; ".join(f"GRU4REC_{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        raise UserError(f"invalid settings: {problems}") from None


def _share_metrics_between_workers() -> None:
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = tempfile.mkdtemp(prefix="gru4rec-metrics-")
        atexit.register(shutil.rmtree, metrics_dir, ignore_errors=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir


def serve(model_dir: str | None, host: str, port: int, workers: int = 1, access_log: bool = False) -> None:
    """Serve MODEL_DIR (or $GRU4REC_MODEL_DIR) until interrupted.

    The model is loaded and checked completely here, weights, item list, top-k index and a warm-up
    included, so that any problem with it is a one-line error (exit 2) before the server starts
    rather than a worker failing with a traceback. With one worker, that very model is then served;
    several workers load it again each (the top-k index from the cache this load filled).
    """
    model_dir = model_dir or os.environ.get("GRU4REC_MODEL_DIR")
    if not model_dir:
        raise UserError("no model: give MODEL_DIR or set GRU4REC_MODEL_DIR")
    read_metadata(model_dir)  # a quick, clear error for a missing or foreign directory
    # every worker process builds its Settings from the environment, so that is where options go
    os.environ["GRU4REC_MODEL_DIR"] = str(Path(model_dir).resolve())
    os.environ["GRU4REC_WORKERS"] = str(workers)
    settings = load_settings()
    if workers > 1:
        if not settings.redis_url:
            raise UserError(
                f"--workers {workers} needs GRU4REC_REDIS_URL: in-process sessions are not shared between "
                "workers, so a session's clicks landing on different workers would give wrong recommendations"
            )
        _share_metrics_between_workers()
    if settings.redis_url:
        from service.redis_store import check_reachable

        check_reachable(settings.redis_url)  # fail now, with a clear message, if Redis is unreachable
    from service.runtime import load_for_settings

    bundle = load_for_settings(settings, build_threads=os.cpu_count() or 1)
    log.info(
        "serving %s (model %s, %d items, top-k %s) on http://%s:%d with %d worker(s)",
        model_dir, bundle.version, bundle.n_items, bundle.describe_retrieval()["mode"], host, port, workers,
    )
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
    os.environ.setdefault("GRU4REC_LOG_LEVEL", level)
    options = dict(host=host, port=port, log_config=None, log_level=level, access_log=access_log,
                   http=JoinedWritesProtocol)
    if workers == 1:
        from service.app import create_app

        uvicorn.run(create_app(settings, bundle), **options)
        return
    del bundle  # each worker loads its own
    gc.collect()
    # log_config=None keeps the gru4rec logging set-up (workers set up the same in app_factory)
    uvicorn.run("service.app:app_factory", factory=True, workers=workers, **options)
