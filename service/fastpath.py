"""The two hot endpoints without the framework's per-request machinery.

FastAPI spends far more CPU on routing, dependency solving and its middleware stack than these
requests need for their model work. So `POST /v1/sessions/{id}/events` and `POST /v1/recommend` are
answered here directly when the request is plainly valid: JSON parsed by orjson, fields checked by
the small functions below, the answer written as bytes. Anything else (another content type, a field
of the wrong type, an unknown field, a body over the limit) goes on, with its body, to the FastAPI
app, whose routes implement the same endpoints with the pydantic models of service.schemas. Those
give the error answers, so an error looks exactly as it always did.

The checks here accept only what the pydantic models accept, with the same values; a property test
(tests/service/test_fast_path.py) holds them to it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from gru4rec.foundation.errors import GRU4RecError
from service.recommender import Filters
from service.settings import ID_MAX_LENGTH, SCHEMA_MAX_ITEMS, SCHEMA_MAX_K, SESSION_ID_PATTERN

log = logging.getLogger(__name__)

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]

EVENTS_PREFIX = "/v1/sessions/"
EVENTS_SUFFIX = "/events"
EVENTS_ROUTE = "/v1/sessions/{session_id}/events"
RECOMMEND_ROUTE = "/v1/recommend"
_SESSION_ID = re.compile(SESSION_ID_PATTERN)
_EVENT_FIELDS = frozenset({"item_id", "k", "exclude_seen", "exclude", "include", "exact"})
_RECOMMEND_FIELDS = frozenset({"items", "session_id", "k", "exclude_seen", "exclude", "include", "exact"})
_JSON_HEADERS = [(b"content-type", b"application/json")]
_INT64 = range(-(2**63), 2**63)


class NotPlain(Exception):
    """The request is not one the fast path answers; the full app will."""


# -- field checks: exactly what service.schemas accepts, or NotPlain ------------------------------------
def item_id(value: Any) -> str:
    if type(value) is str:
        if 0 < len(value) <= ID_MAX_LENGTH:
            return value
    elif type(value) is int and value in _INT64:
        return str(value)
    raise NotPlain


def item_ids(value: Any) -> list[str]:
    if type(value) is not list or len(value) > SCHEMA_MAX_ITEMS:
        raise NotPlain
    return [item_id(v) for v in value]


def filters(body: dict) -> Filters:
    k = body.get("k", 20)
    if type(k) is not int or not 1 <= k <= SCHEMA_MAX_K:
        raise NotPlain
    exclude_seen = body.get("exclude_seen", False)
    exact = body.get("exact", False)
    if type(exclude_seen) is not bool or type(exact) is not bool:
        raise NotPlain
    exclude = item_ids(body["exclude"]) if "exclude" in body else []
    include = body.get("include")
    return Filters(k, exclude_seen, exclude, None if include is None else item_ids(include), exact)


def parse_event(raw: bytes) -> tuple[str, Filters]:
    body = _object(raw, _EVENT_FIELDS)
    if "item_id" not in body:
        raise NotPlain
    return item_id(body["item_id"]), filters(body)


def parse_recommend(raw: bytes) -> tuple[list[str] | None, str | None, Filters]:
    body = _object(raw, _RECOMMEND_FIELDS)
    items = body.get("items")
    session_id = body.get("session_id")
    if session_id is not None and (type(session_id) is not str or not _SESSION_ID.fullmatch(session_id)):
        raise NotPlain
    return (None if items is None else item_ids(items)), session_id, filters(body)


def _object(raw: bytes, fields: frozenset[str]) -> dict:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise NotPlain from None
    if type(body) is not dict or not fields.issuperset(body):
        raise NotPlain
    return body


def events_session_id(path: str) -> str | None:
    """The session id of an events path that FastAPI's router would match, else None."""
    if not (path.startswith(EVENTS_PREFIX) and path.endswith(EVENTS_SUFFIX)):
        return None
    session_id = path[len(EVENTS_PREFIX) : -len(EVENTS_SUFFIX)]
    if "/" in session_id or not _SESSION_ID.fullmatch(session_id):
        return None
    return session_id


# -- the ASGI side ------------------------------------------------------------------------------------
class FastPath:
    """Answers plainly valid hot-path requests; hands everything else to `fallback` (the FastAPI app)."""

    def __init__(self, state: Any, fallback: ASGIApp) -> None:
        self.state = state  # the app's state: settings, metrics, runtime, recommender
        self.fallback = fallback
        settings = state.settings
        self.max_body = settings.max_body_bytes
        self.body_timeout = settings.body_timeout_s
        self.enabled = True

    async def __call__(self, scope: dict, receive, send) -> None:
        path = scope["path"]
        session_id = None
        if path != RECOMMEND_ROUTE:
            session_id = events_session_id(path)
        if (path != RECOMMEND_ROUTE and session_id is None) or scope.get("root_path") or not _plain_json(scope, self.max_body):
            await self.fallback(scope, receive, send)
            return
        started = time.perf_counter()
        try:
            raw = await self._body(receive)
        except TimeoutError:
            await _send(send, 408, orjson.dumps({"detail": f"request body not received within {self.body_timeout:g} s"}),
                        [(b"connection", b"close")])
            self._observe(session_id, 408, started)
            return
        if raw is None:  # the client went away
            return
        try:
            content = await self._answer(session_id, raw)
        except NotPlain:
            await self.fallback(scope, _replay(raw, receive), send)
            return
        except GRU4RecError as exc:
            await self._error(send, exc, session_id, started)
            return
        except Exception:
            log.exception("unhandled error on POST %s", path)
            await _send(send, 500, orjson.dumps({"detail": "internal error"}))
            self._observe(session_id, 500, started)
            return
        await _send(send, 200, content)
        self._observe(session_id, 200, started)

    async def _body(self, receive) -> bytes | None:
        """The whole body (its size is bounded by the checked Content-Length); None if the client left."""
        chunks = []
        async with asyncio.timeout(self.body_timeout):
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return None
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def _answer(self, session_id: str | None, raw: bytes) -> bytes:
        if not self.enabled:
            raise NotPlain
        state = self.state
        bundle = state.runtime.bundle
        if session_id is not None:
            item, options = parse_event(raw)
            return await state.recommender.click(bundle, session_id, item, options)
        items, session, options = parse_recommend(raw)
        return await state.recommender.recommend(bundle, items, session, options)

    async def _error(self, send, exc: GRU4RecError, session_id: str | None, started: float) -> None:
        if exc.http_status >= 500:
            log.error("POST %s: %s", EVENTS_ROUTE if session_id is not None else RECOMMEND_ROUTE, exc)
        headers = [(k.lower().encode(), str(v).encode()) for k, v in (getattr(exc, "headers", None) or {}).items()]
        await _send(send, exc.http_status, orjson.dumps({"detail": exc.detail()}), headers)
        self._observe(session_id, exc.http_status, started)

    def _observe(self, session_id: str | None, status: int, started: float) -> None:
        endpoint = RECOMMEND_ROUTE if session_id is None else EVENTS_ROUTE
        self.state.metrics.observe_request("POST", endpoint, status, time.perf_counter() - started)


def _plain_json(scope: dict, max_body: int) -> bool:
    """Content-Type application/json and a Content-Length within the limit (the full app judges the rest)."""
    json_type = length = False
    for name, value in scope["headers"]:
        if name == b"content-type":
            json_type = value == b"application/json"
        elif name == b"content-length":
            length = value.isdigit() and int(value) <= max_body
        elif name == b"transfer-encoding" or name == b"expect":
            return False
    return json_type and length


def _replay(body: bytes, receive):
    """A receive() that first hands out the body already read, then continues with the real one."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send(send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    if extra:
        headers += extra
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
