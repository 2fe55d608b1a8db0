"""Exception -> HTTP answer. Bad input is always a 4xx with a message that says what to fix."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from gru4rec.foundation.errors import UserError
from service.recommender import LimitExceeded, UnknownSession
from service.sessions import SessionConflict, SessionStoreError

log = logging.getLogger(__name__)


def _loc_part(part: object) -> str | int:
    return part if isinstance(part, int) and not isinstance(part, bool) else str(part)


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with {loc, msg, type} per problem; the offending input is not echoed back (it may be huge)."""
    detail = [
        {"loc": [_loc_part(p) for p in err.get("loc", ())], "msg": str(err.get("msg", "")), "type": str(err.get("type", ""))}
        for err in exc.errors()
    ]
    return JSONResponse({"detail": detail}, status_code=422)


async def limit_exceeded(request: Request, exc: LimitExceeded) -> JSONResponse:
    return JSONResponse({"detail": [{"loc": ["body", exc.field], "msg": str(exc), "type": "limit"}]}, status_code=422)


async def unknown_session(request: Request, exc: UnknownSession) -> JSONResponse:
    return JSONResponse(
        {"detail": f"session {exc.args[0]!r} is not known here (new, expired or deleted): send its clicks in `items`"},
        status_code=404,
    )


async def user_error(request: Request, exc: UserError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=400)


async def store_unavailable(request: Request, exc: SessionStoreError) -> JSONResponse:
    log.error("session store unavailable: %s", exc)
    return JSONResponse({"detail": f"session store unavailable: {exc}"}, status_code=503, headers={"Retry-After": "1"})


async def session_conflict(request: Request, exc: SessionConflict) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=409)


async def unexpected(request: Request, exc: Exception) -> JSONResponse:
    """A bug: log it with its traceback, answer without one."""
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse({"detail": "internal error"}, status_code=500)


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(LimitExceeded, limit_exceeded)
    app.add_exception_handler(UnknownSession, unknown_session)
    app.add_exception_handler(UserError, user_error)
    app.add_exception_handler(SessionStoreError, store_unavailable)
    app.add_exception_handler(SessionConflict, session_conflict)
    app.add_exception_handler(Exception, unexpected)
