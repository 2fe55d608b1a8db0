"""Request logic, independent of HTTP: sessions, unknown items, filters, fallback, the JSON answer.

Everything here runs on the event loop; the model work goes to the batcher (service.batcher), so
concurrent requests share GRU steps and score products. Each call gets the ModelBundle the request
started with and uses nothing else of the model.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import orjson

from service.batcher import Batcher
from service.engine import EMPTY, ModelBundle, Query, TopK
from service.errors import LimitExceeded, MissingField, SessionConflict, UnknownSession
from service.metrics import Metrics
from service.sessions import Entry, SessionState, SessionStore

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 20  # conditional writes of one request before a 409 (other processes kept winning)
BACK_OFF_S = 0.0005  # after the n-th conflict in a row (n >= 2), a random wait of up to n times this


@dataclass(frozen=True, slots=True)
class Filters:
    k: int = 20
    exclude_seen: bool = False
    exclude: Sequence[str] = ()
    include: Sequence[str] | None = None
    exact: bool = False


@dataclass(frozen=True, slots=True)
class Plan:
    """How to get a session's next state: start from `start` (None: zeros), feed `steps`; the new
    state's bookkeeping is `after` (whose `hidden` is filled in from the result)."""

    start: np.ndarray | None
    steps: list[int]
    after: SessionState


class SessionLocks:
    """Requests of one session run one after the other within this process (fewer write conflicts,
    and the in-process store needs no other locking)."""

    def __init__(self) -> None:
        self._held: dict[str, list] = {}  # session id -> [lock, users]

    async def acquire(self, session_id: str) -> None:
        entry = self._held.get(session_id)
        if entry is None:
            entry = self._held[session_id] = [asyncio.Lock(), 0]
        entry[1] += 1
        try:
            await entry[0].acquire()
        except BaseException:
            self._drop(session_id, entry)
            raise

    def release(self, session_id: str) -> None:
        entry = self._held[session_id]
        entry[0].release()
        self._drop(session_id, entry)

    def _drop(self, session_id: str, entry: list) -> None:
        entry[1] -= 1
        if entry[1] == 0:
            del self._held[session_id]


class Recommender:
    """Turns clicks into recommendations, keeping session state in a SessionStore."""

    def __init__(
        self, store: SessionStore, batcher: Batcher, metrics: Metrics, max_items: int, max_k: int, max_session_clicks: int
    ) -> None:
        self.store = store
        self.batcher = batcher
        self.metrics = metrics
        self.max_items = max_items
        self.max_k = max_k
        self.max_session_clicks = max_session_clicks
        self._locks = SessionLocks()

    # -- entry points (one per endpoint) ---------------------------------------------------------
    async def recommend(self, bundle: ModelBundle, items: list[str] | None, session_id: str | None, filters: Filters) -> bytes:
        """POST /v1/recommend: stateless from `items`, or stateful when `session_id` is given."""
        self._check(bundle, filters, items)
        if session_id is not None:
            await self._locks.acquire(session_id)
            try:
                if items is None:
                    return await self._ask_again(bundle, session_id, filters)
                return await self._update(bundle, session_id, items, filters)
            finally:
                self._locks.release(session_id)
        if items is None:
            raise MissingField("items", "give the session's clicks in `items`, or a `session_id` of a known session")
        indices = bundle.catalogue.lookup(items)
        known = [i for i in indices if i >= 0]
        unknown = [item for item, i in zip(items, indices, strict=True) if i < 0]
        self._count_clicks(len(items), len(unknown))
        query = self._query(bundle, filters, known if filters.exclude_seen else ())
        if not known:
            return render(bundle, self._popular(bundle, query), unknown)
        outcome = await self.batcher.run(bundle, None, known, query)
        return render(bundle, outcome.top, unknown)

    async def click(self, bundle: ModelBundle, session_id: str, item_id: str, filters: Filters) -> bytes:
        """POST /v1/sessions/{id}/events: one click advances the stored state by one GRU step."""
        self._check(bundle, filters, None)
        await self._locks.acquire(session_id)
        try:
            return await self._update(bundle, session_id, [item_id], filters, continues=True)
        finally:
            self._locks.release(session_id)

    async def forget(self, session_id: str) -> bool:
        return await self.store.delete(session_id)

    # -- stateful requests -------------------------------------------------------------------------
    async def _update(
        self, bundle: ModelBundle, session_id: str, items: list[str], filters: Filters, continues: bool = False
    ) -> bytes:
        """Add `items` to the session (all of them when `continues`, else the part of the history it
        has not seen) and answer; retried from the stored state when another process wrote first."""
        indices = bundle.catalogue.lookup(items)
        entry = await self.store.read(session_id)
        for attempt in range(MAX_ATTEMPTS):
            current = self._usable(bundle, session_id, entry)
            new = items if continues else self._extension(current, items)
            if new is None:  # not a continuation of what we have: start over from the given clicks
                current, new = None, items
            plan = self._plan(bundle, current, new, indices[len(indices) - len(new) :])
            state, top = await self._run(bundle, plan, self._query(bundle, filters, _seen(plan.after, filters)))
            conflict = await self.store.write(session_id, state, entry)
            if conflict is None:
                unknown = [item for item, i in zip(items, indices, strict=True) if i < 0]
                self._count_clicks(len(items), len(unknown))
                return render(bundle, top, unknown)
            entry = conflict
            await _back_off(attempt)
        raise SessionConflict(f"session {session_id!r} changed {MAX_ATTEMPTS} times while being updated; retry")

    async def _ask_again(self, bundle: ModelBundle, session_id: str, filters: Filters) -> bytes:
        """The stored session's recommendations (e.g. with other filters), without new clicks."""
        entry = await self.store.read(session_id, touch=True)
        for attempt in range(MAX_ATTEMPTS):
            current = self._usable(bundle, session_id, entry)
            if current is None:
                raise UnknownSession(session_id)
            if current.model_version == bundle.version:
                state, top = await self._run(bundle, Plan(current.hidden, [], current), self._query(bundle, filters, _seen(current, filters)))
                return render(bundle, top, [])
            plan = self._plan(bundle, current, [], [])
            state, top = await self._run(bundle, plan, self._query(bundle, filters, _seen(plan.after, filters)))
            conflict = await self.store.write(session_id, state, entry)
            if conflict is None:
                return render(bundle, top, [])
            entry = conflict
            await _back_off(attempt)
        raise SessionConflict(f"session {session_id!r} changed {MAX_ATTEMPTS} times while being updated; retry")

    def _usable(self, bundle: ModelBundle, session_id: str, entry: Entry) -> SessionState | None:
        """The stored state if it can be used (as is, or rebuilt for another model version); None for
        a new session, and for an entry that cannot be read or does not fit: it is overwritten."""
        state = entry.state
        problem = entry.damaged
        if state is not None and state.model_version == bundle.version and not entry.trusted:
            problem = _misfit(bundle, state)
        if problem is None:
            return state
        log.warning("session %r: stored entry ignored, the session starts afresh: %s", session_id, problem)
        self.metrics.damaged_sessions.inc()
        return None

    def _plan(self, bundle: ModelBundle, current: SessionState | None, clicks: list[str], indices: list[int]) -> Plan:
        """Advance `current` (None: a new session) by `clicks`; recomputed from its remembered clicks
        if it was made by another model version."""
        if current is not None and current.model_version != bundle.version:
            self.metrics.rebuilds.inc()
            old = bundle.catalogue.lookup(list(current.clicks))
            current = SessionState(bundle.version, bundle.initial_state(), current.clicks, tuple(old), current.n_clicks,
                                   sum(1 for i in old if i >= 0))
            start, steps = None, [i for i in old if i >= 0]
        elif current is None:
            current, start, steps = SessionState(bundle.version, bundle.initial_state()), None, []
        else:
            start, steps = current.hidden, []
        new_known = [i for i in indices if i >= 0]
        cap = self.max_session_clicks
        after = SessionState(
            model_version=bundle.version,
            hidden=current.hidden,
            clicks=(current.clicks + tuple(clicks))[-cap:],
            indices=(current.indices + tuple(indices))[-cap:],
            n_clicks=current.n_clicks + len(clicks),
            n_known=current.n_known + len(new_known),
        )
        return Plan(start, steps + new_known, after)

    async def _run(self, bundle: ModelBundle, plan: Plan, query: Query) -> tuple[SessionState, TopK]:
        after = plan.after
        if after.n_known == 0:  # nothing the model knows yet: a zero state and the popular items
            return after, self._popular(bundle, query)
        outcome = await self.batcher.run(bundle, plan.start, plan.steps, query)
        state = SessionState(after.model_version, outcome.state, after.clicks, after.indices, after.n_clicks, after.n_known)
        return state, outcome.top

    @staticmethod
    def _extension(state: SessionState | None, items: list[str]) -> list[str] | None:
        """The clicks in `items` after the ones `state` already holds, or None if `items` does not
        continue the stored session (then it is replayed from scratch)."""
        if state is None or state.n_clicks > len(items):
            return None
        start = state.n_clicks - len(state.clicks)  # position of the first remembered click
        if tuple(items[start : state.n_clicks]) != state.clicks:
            return None
        return items[state.n_clicks :]

    # -- helpers ----------------------------------------------------------------------------------
    def _check(self, bundle: ModelBundle, filters: Filters, items: list[str] | None) -> None:
        if filters.k > self.max_k:
            raise LimitExceeded("k", f"k={filters.k} is over this service's limit of {self.max_k}")
        if filters.k > bundle.n_items:
            raise LimitExceeded("k", f"k={filters.k} is more than the {bundle.n_items} items the model knows")
        if items is not None and len(items) > self.max_items:
            raise LimitExceeded("items", f"{len(items)} items, over this service's limit of {self.max_items} per request")

    @staticmethod
    def _query(bundle: ModelBundle, filters: Filters, seen: Sequence[int]) -> Query:
        excluded = bundle.catalogue.known(filters.exclude)
        if seen:
            excluded += seen
        exclude = np.asarray(excluded, dtype=np.int64) if excluded else EMPTY
        include = None
        if filters.include is not None:
            include = np.unique(np.asarray(bundle.catalogue.known(filters.include), dtype=np.int64))
            if len(exclude) and len(include):
                include = include[~np.isin(include, exclude)]
        return Query(filters.k, exclude, include, filters.exact)

    def _popular(self, bundle: ModelBundle, query: Query) -> TopK:
        self.metrics.fallbacks.inc()
        return bundle.popular(query)

    def _count_clicks(self, n: int, unknown: int) -> None:
        if n:
            self.metrics.clicked_items.inc(n)
        if unknown:
            self.metrics.unknown_items.inc(unknown)


def _seen(state: SessionState, filters: Filters) -> Sequence[int]:
    return state.seen() if filters.exclude_seen else ()


def _misfit(bundle: ModelBundle, state: SessionState) -> str | None:
    """Why a state stored under this model's version cannot be used with it (None: it can)."""
    hidden = state.hidden
    if not isinstance(hidden, np.ndarray) or hidden.dtype != np.float32 or hidden.shape != (bundle.state_size,):
        return f"state of {getattr(hidden, 'size', '?')} values, the model's has {bundle.state_size}"
    if not np.isfinite(hidden).all():
        return "state holds NaN or infinite values"
    if len(state.indices) != len(state.clicks):
        return "click and index lists differ in length"
    if state.indices and (min(state.indices) < -1 or max(state.indices) >= bundle.n_items):
        return f"item index out of range (the model has {bundle.n_items} items)"
    return None


def render(bundle: ModelBundle, top: TopK, unknown: list[str]) -> bytes:
    """The response body, built directly (no pydantic on the way out: this is the hot path)."""
    ids = bundle.catalogue.ids_of(top.indices)
    return orjson.dumps({
        "items": [{"item_id": i, "score": s} for i, s in zip(ids, top.scores, strict=True)],
        "model_version": bundle.version,
        "unknown_items": unknown,
        "source": top.source,
    })


async def _back_off(attempt: int) -> None:
    """After the first conflict the request retries at once (the usual case: another process wrote the
    session since this one last saw it). Writers that keep colliding, such as a session's clicks
    arriving at several processes at once, wait a random, growing moment, so that they stop computing
    in lockstep and one after another gets through (without it, one could lose 20 times in a row)."""
    if attempt:
        await asyncio.sleep(random.uniform(0, BACK_OFF_S * min(attempt + 1, 10)))
