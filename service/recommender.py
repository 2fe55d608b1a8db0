"""Request logic, independent of HTTP: sessions, unknown items, filters, fallback, the JSON answer.

Everything here is synchronous and CPU-bound; the routers run it in the threadpool. Each call gets
the ModelBundle the request started with and uses nothing else of the model.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from service.engine import ModelBundle, TopK
from service.errors import LimitExceeded, MissingField, UnknownSession
from service.metrics import Metrics
from service.sessions import SessionState, SessionStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Filters:
    k: int = 20
    exclude_seen: bool = False
    exclude: Sequence[str] = ()
    include: Sequence[str] | None = None


class Recommender:
    """Turns clicks into recommendations, keeping session state in a SessionStore."""

    def __init__(self, store: SessionStore, metrics: Metrics, max_items: int, max_k: int, max_session_clicks: int) -> None:
        self.store = store
        self.metrics = metrics
        self.max_items = max_items
        self.max_k = max_k
        self.max_session_clicks = max_session_clicks

    # -- entry points (one per endpoint) ---------------------------------------------------------
    def recommend(
        self, bundle: ModelBundle, items: list[str] | None, session_id: str | None, filters: Filters
    ) -> bytes:
        """POST /v1/recommend: stateless from `items`, or stateful when `session_id` is given."""
        self._check(bundle, filters, items)
        if session_id is None:
            if items is None:
                raise MissingField("items", "give the session's clicks in `items`, or a `session_id` of a known session")
            indices = bundle.lookup(items)
            known = [i for i in indices if i >= 0]
            state = bundle.advance(None, known) if known else None
            seen = known if filters.exclude_seen else ()
            unknown = [item for item, i in zip(items, indices, strict=True) if i < 0]
            self._count_clicks(len(items), len(unknown))
            return self._answer(bundle, state, seen, unknown, filters)

        unknown_items: list[str] = []

        def update(current: SessionState | None) -> SessionState:
            current = self._current(bundle, current)
            if items is None:
                if current is None:
                    raise UnknownSession(session_id)
                return current
            new = self._extension(current, items)
            if new is None:  # not a continuation of what we have: start over from the given clicks
                current, new = None, items
            indices = bundle.lookup(items)
            unknown_items[:] = [item for item, i in zip(items, indices, strict=True) if i < 0]
            return self._append(bundle, current, new, indices[len(indices) - len(new) :])

        state = self.store.update(session_id, update)
        if items is not None:
            self._count_clicks(len(items), len(unknown_items))
        return self._answer(bundle, state.hidden if state.n_known else None, self._seen(state, filters), unknown_items, filters)

    def click(self, bundle: ModelBundle, session_id: str, item_id: str, filters: Filters) -> bytes:
        """POST /v1/sessions/{id}/events: one click advances the stored state by one GRU step."""
        self._check(bundle, filters, None)
        index = bundle.index.get(item_id, -1)

        def update(current: SessionState | None) -> SessionState:
            return self._append(bundle, self._current(bundle, current), [item_id], [index])

        state = self.store.update(session_id, update)
        unknown = [item_id] if index < 0 else []
        self._count_clicks(1, len(unknown))
        return self._answer(bundle, state.hidden if state.n_known else None, self._seen(state, filters), unknown, filters)

    def forget(self, session_id: str) -> bool:
        return self.store.delete(session_id)

    # -- helpers ----------------------------------------------------------------------------------
    def _check(self, bundle: ModelBundle, filters: Filters, items: list[str] | None) -> None:
        if filters.k > self.max_k:
            raise LimitExceeded("k", f"k={filters.k} is over this service's limit of {self.max_k}")
        if filters.k > bundle.n_items:
            raise LimitExceeded("k", f"k={filters.k} is more than the {bundle.n_items} items the model knows")
        if items is not None and len(items) > self.max_items:
            raise LimitExceeded("items", f"{len(items)} items, over this service's limit of {self.max_items} per request")

    def _current(self, bundle: ModelBundle, state: SessionState | None) -> SessionState | None:
        """The stored state, recomputed from its clicks if it was made by another model version."""
        if state is None or state.model_version == bundle.version:
            return state
        self.metrics.rebuilds.inc()
        indices = bundle.lookup(state.clicks)
        known = [i for i in indices if i >= 0]
        return SessionState(
            model_version=bundle.version,
            hidden=bundle.advance(None, known),
            clicks=state.clicks,
            indices=tuple(indices),
            n_clicks=state.n_clicks,
            n_known=len(known),
        )

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

    def _append(self, bundle: ModelBundle, state: SessionState | None, clicks: list[str], indices: list[int]) -> SessionState:
        """A new state: `state` (None: an empty session) advanced by `clicks` (with their indices)."""
        known = [i for i in indices if i >= 0]
        if state is None:
            state = SessionState(bundle.version, bundle.initial_state())
        cap = self.max_session_clicks
        return SessionState(
            model_version=bundle.version,
            hidden=bundle.advance(state.hidden, known) if known else state.hidden,
            clicks=(state.clicks + tuple(clicks))[-cap:],
            indices=(state.indices + tuple(indices))[-cap:],
            n_clicks=state.n_clicks + len(clicks),
            n_known=state.n_known + len(known),
        )

    @staticmethod
    def _seen(state: SessionState, filters: Filters) -> Sequence[int]:
        return state.seen() if filters.exclude_seen else ()

    def _count_clicks(self, n: int, unknown: int) -> None:
        if n:
            self.metrics.clicked_items.inc(n)
        if unknown:
            self.metrics.unknown_items.inc(unknown)

    def _answer(self, bundle: ModelBundle, state, seen: Sequence[int], unknown: list[str], filters: Filters) -> bytes:
        exclude = bundle.known_indices(filters.exclude)
        if seen:
            exclude = exclude + list(seen)
        include = None if filters.include is None else bundle.known_indices(filters.include)
        if state is None:
            self.metrics.fallbacks.inc()
            top = bundle.popular(filters.k, exclude, include)
        else:
            top = bundle.top_k(state, filters.k, exclude, include)
        return render(bundle, top, unknown)


def render(bundle: ModelBundle, top: TopK, unknown: list[str]) -> bytes:
    """The response body, built directly (no pydantic on the way out: this is the hot path)."""
    ids = bundle.ids
    body = {
        "items": [{"item_id": ids[i], "score": s} for i, s in zip(top.indices, top.scores, strict=True)],
        "model_version": bundle.version,
        "unknown_items": unknown,
        "source": top.source,
    }
    return json.dumps(body, separators=(",", ":")).encode()
