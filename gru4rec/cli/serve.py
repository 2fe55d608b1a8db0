"""`gru4rec serve`: the HTTP recommendation service (FastAPI on uvicorn)."""

from __future__ import annotations

import argparse


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
    from service.server import serve

    serve(getattr(args, "model_dir", None), args.host, args.port, args.workers, args.access_log)
    return 0
