"""Exception -> HTTP answer, and the failures only the service has.

Every reported failure is a GRU4RecError that carries its own HTTP status (and exit code), so one
handler maps them all: bad input is a 4xx with a message that says what to fix, an unreachable
session store a 503. Request bodies that do not match the schema are FastAPI's 422. Anything else
is a bug: logged with its traceback, answered 500 without one.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from gru4rec.foundation.errors import GRU4RecError, UserError

log = logging.getLogger(__name__)


class InvalidField(UserError):
    """A well-formed request whose field `field` cannot be served as asked (422, like a schema error)."""

    http_status = 422
    kind = "value_error"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field

    def detail(self) -> Any:
        return [{"loc": ["body", self.field], "msg": str(self), "type": self.kind}]


class MissingField(InvalidField):
    """A field that this kind of request needs was left out."""

    kind = "missing"


class LimitExceeded(InvalidField):
    """A field over a configured limit (k, items per request)."""

    kind = "limit"


class UnknownSession(GRU4RecError):
    """A request named a session that does not exist (never seen, expired or deleted) and gave no items."""

    http_status = 404

    def __init__(self, session_id: str) -> None:
        super().__init__(
            f"session {session_id!r} is not known here (new, expired or deleted): send its clicks in `items`"
        )


class SessionStoreError(GRU4RecError):
    """The session store cannot be used right now (e.g. Redis unreachable): 503, try again."""

    http_status = 503
    headers = {"Retry-After": "1"}


class SessionConflict(GRU4RecError):
    """A session kept changing under a transaction (many concurrent clicks): 409, retry."""

    http_status = 409


def _loc_part(part: object) -> str | int:
    return part if isinstance(part, int) and not isinstance(part, bool) else str(part)


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with {loc, msg, type} per problem; the offending input is not echoed back (it may be huge)."""
    detail = [
        {"loc": [_loc_part(p) for p in err.get("loc", ())], "msg": str(err.get("msg", "")), "type": str(err.get("type", ""))}
        for err in exc.errors()
    ]
    return JSONResponse({"detail": detail}, status_code=422)


async def reported(request: Request, exc: GRU4RecError) -> JSONResponse:
    if exc.http_status >= 500:
        log.error("%s %s: %s", request.method, request.url.path, exc)
    return JSONResponse({"detail": exc.detail()}, status_code=exc.http_status, headers=getattr(exc, "headers", None))


async def unexpected(request: Request, exc: Exception) -> JSONResponse:
    """A bug: log it with its traceback, answer without one."""
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse({"detail": "internal error"}, status_code=500)


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(GRU4RecError, reported)
    app.add_exception_handler(Exception, unexpected)
