"""`gru4rec serve`: the HTTP recommendation service (FastAPI on uvicorn)."""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger("gru4rec.serve")


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (0-65535)")
    return value


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("needs at least 1 worker")
    return value


def register(subparsers, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "serve",
        parents=[common],
        help="serve recommendations over HTTP",
        description=(
            "Serve the model in MODEL_DIR over HTTP: POST /v1/recommend, POST /v1/sessions/{id}/events, "
            "GET /v1/model, /healthz, /readyz, /metrics and /docs. Settings come from GRU4REC_* environment "
            "variables (GRU4REC_REDIS_URL to share sessions between workers and replicas, GRU4REC_API_KEY to "
            "enable POST /v1/admin/reload, GRU4REC_SESSION_TTL_S, GRU4REC_MAX_SESSIONS, "
            "GRU4REC_MAX_SESSION_MEMORY_MB, GRU4REC_MAX_ITEMS_PER_REQUEST, GRU4REC_MAX_K, "
            "GRU4REC_TORCH_THREADS, GRU4REC_RELOAD_POLL_S). A new checkpoint written to MODEL_DIR is picked "
            "up without a restart."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "model_dir", metavar="MODEL_DIR", nargs="?", default=argparse.SUPPRESS,
        help="model directory written by `gru4rec train`; when left out, $GRU4REC_MODEL_DIR",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all interfaces)")
    p.add_argument("--port", type=_port, default=8000, help="TCP port")
    p.add_argument(
        "--workers", type=_workers, default=1,
        help="worker processes; more than one needs GRU4REC_REDIS_URL so every worker sees every session",
    )
    p.add_argument("--access-log", action="store_true", help="log every request (costs latency)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import pydantic
    import uvicorn

    from gru4rec.model.checkpoint import read_metadata
    from gru4rec.foundation.errors import UserError
    from service.settings import Settings

    model_dir = getattr(args, "model_dir", None) or os.environ.get("GRU4REC_MODEL_DIR")
    if not model_dir:
        raise UserError("no model: give MODEL_DIR or set GRU4REC_MODEL_DIR")
    metadata = read_metadata(model_dir)  # a clear error now rather than a failed worker start-up
    # every worker process builds its Settings from the environment, so that is where options go
    os.environ["GRU4REC_MODEL_DIR"] = str(Path(model_dir).resolve())
    try:
        settings = Settings()
    except pydantic.ValidationError as exc:
        problems = "; ".join(f"GRU4REC_{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        raise UserError(f"invalid settings: {problems}") from None
    if args.workers > 1:
        if not settings.redis_url:
            raise UserError(
                f"--workers {args.workers} needs GRU4REC_REDIS_URL: in-process sessions are not shared between "
                "workers, so a session's clicks landing on different workers would give wrong recommendations"
            )
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            metrics_dir = tempfile.mkdtemp(prefix="gru4rec-metrics-")
            atexit.register(shutil.rmtree, metrics_dir, ignore_errors=True)
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    if settings.redis_url:
        from service.sessions import SessionStoreError, make_store

        try:
            make_store(settings).close()  # fail now, with a clear message, if Redis is unreachable
        except SessionStoreError as exc:
            raise UserError(str(exc)) from None
    log.info(
        "serving %s (model %s, %d items) on http://%s:%d with %d worker(s)",
        model_dir, metadata.get("model_version"), metadata.get("n_items", 0), args.host, args.port, args.workers,
    )
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
    os.environ.setdefault("GRU4REC_LOG_LEVEL", level)
    uvicorn.run(
        "service.app:app_factory",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_config=None,  # keep the gru4rec logging set-up (workers set up the same in app_factory)
        log_level=level,
        access_log=args.access_log,
    )
    return 0
