"""Session stores: where a session's GRU state and recent clicks live between requests.

Two implementations behind one interface (SessionStore), both used from the event loop:

* MemorySessionStore (default): in this process; LRU with a sliding TTL, bounded by a session count
  and an (estimated) memory budget. Sessions are not shared between worker processes.
* RedisSessionStore (GRU4REC_REDIS_URL): one Redis string per session with a TTL, so every worker and
  replica sees the same sessions.

An update is read, compute, then a conditional write: `write(..., expected=entry)` stores the new
state only if the session still is what `read` returned, and otherwise answers with what it is now,
so the caller recomputes from that. Two clicks of one session arriving at two workers at once are
thus both applied, one after the other. Within a process the recommender also serialises the
requests of a session, so conflicts only come from other processes.

A state records the model version it was computed with. The stores never interpret it; the
recommender checks it, rebuilds a state from its stored clicks when the serving model has changed,
and treats an entry that does not fit the model as a new session. Only the last
GRU4REC_MAX_SESSION_CLICKS clicks are stored, so a rebuilt state of a longer session starts there.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from service.errors import SessionStoreError

log = logging.getLogger(__name__)

EvictionHook = Callable[[str, int], None]  # (reason, how many)


@dataclass(slots=True)
class SessionState:
    """What is kept per session: the GRU state and the recent clicks that produced it.

    Slots and tuples keep a session at one object the garbage collector has to look at (tuples of
    str/int are untracked), so many sessions do not make its full passes, and so latency, worse.
    """

    model_version: str
    hidden: np.ndarray  # float32 [sum(layer sizes)]
    clicks: tuple[str, ...] = ()  # the last max_session_clicks clicked ids, oldest first
    indices: tuple[int, ...] = ()  # their indices under model_version (-1: unknown)
    n_clicks: int = 0  # all clicks ever recorded (len(clicks) is capped)
    n_known: int = 0  # clicks the model knew, i.e. steps that went into `hidden`

    def nbytes(self) -> int:
        """Rough memory footprint, for the in-process store's memory bound."""
        return 240 + self.hidden.nbytes + 57 * len(self.clicks) + sum(map(len, self.clicks)) + 36 * len(self.indices)

    def seen(self) -> list[int]:
        """Known items among the remembered clicks (what exclude_seen hides)."""
        return [i for i in self.indices if i >= 0]


@dataclass(frozen=True, slots=True)
class Entry:
    """What a read found: the state (None: no session, or one that could not be read) and the stored
    version it came from (`token`), which a conditional write checks."""

    state: SessionState | None
    token: object = None
    damaged: str | None = None  # why the stored entry could not be read, if it could not
    trusted: bool = False  # written by this process (the in-process store): no need to check it

    @property
    def exists(self) -> bool:
        return self.state is not None


MISSING = Entry(None)


class SessionStore(ABC):
    """The interface the recommender uses, from the event loop."""

    kind: str = "abstract"

    @abstractmethod
    async def read(self, session_id: str, touch: bool = False) -> Entry:
        """The session as stored (MISSING if unknown or expired); `touch` refreshes its TTL.

        May answer from what this process itself last wrote; `write` notices if that is stale.
        """

    @abstractmethod
    async def write(self, session_id: str, state: SessionState, expected: Entry) -> Entry | None:
        """Store `state` if the session is still `expected`: None when written, else the entry as it is now."""

    @abstractmethod
    async def delete(self, session_id: str) -> bool:
        """Forget a session; True if it existed."""

    @abstractmethod
    async def size(self) -> int:
        """Live sessions (for metrics)."""

    async def ping(self) -> bool:
        """Whether the store can serve requests (for /readyz)."""
        return True

    async def close(self) -> None:
        """Release connections."""


class MemorySessionStore(SessionStore):
    """In-process LRU store with a sliding TTL, a session-count bound and a memory bound.

    Only the event loop's thread touches it, and the recommender serialises the requests of a
    session, so a write never conflicts and needs no lock.
    """

    kind = "memory"

    def __init__(
        self,
        ttl_s: float,
        max_sessions: int,
        max_bytes: int,
        on_evict: EvictionHook | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self.max_bytes = max_bytes
        self._on_evict = on_evict or (lambda reason, n: None)
        self._clock = clock
        # session id -> (state, expires_at, nbytes); order = least recently used first. With one TTL
        # for all, that is also the order of expiry, so expired sessions are always at the front.
        self._data: OrderedDict[str, tuple[SessionState, float, int]] = OrderedDict()
        self._bytes = 0

    def get(self, session_id: str, touch: bool = False) -> SessionState | None:
        entry = self._data.get(session_id)
        if entry is None:
            return None
        if entry[1] <= self._clock():
            self._remove(session_id)
            self._on_evict("ttl", 1)
            return None
        if touch:
            self._data[session_id] = (entry[0], self._clock() + self.ttl_s, entry[2])
            self._data.move_to_end(session_id)
        return entry[0]

    def put(self, session_id: str, state: SessionState) -> None:
        now = self._clock()
        nbytes = state.nbytes()
        if session_id in self._data:
            self._remove(session_id)
        self._data[session_id] = (state, now + self.ttl_s, nbytes)
        self._bytes += nbytes
        self._expire(now)
        lru = 0
        while len(self._data) > self.max_sessions:
            self._pop_oldest()
            lru += 1
        memory = 0
        while self._bytes > self.max_bytes and len(self._data) > 1:
            self._pop_oldest()
            memory += 1
        if lru:
            self._on_evict("lru", lru)
        if memory:
            self._on_evict("memory", memory)

    async def read(self, session_id: str, touch: bool = False) -> Entry:
        state = self.get(session_id, touch)
        return MISSING if state is None else Entry(state, trusted=True)

    async def write(self, session_id: str, state: SessionState, expected: Entry) -> Entry | None:
        self.put(session_id, state)
        return None

    async def delete(self, session_id: str) -> bool:
        entry = self._data.get(session_id)
        if entry is None:
            return False
        self._remove(session_id)
        return entry[1] > self._clock()

    async def size(self) -> int:
        self._expire(self._clock())
        return len(self._data)

    def memory_bytes(self) -> int:
        return self._bytes

    def _expire(self, now: float) -> None:
        expired = 0
        while self._data:
            first = next(iter(self._data.values()))
            if first[1] > now:
                break
            self._pop_oldest()
            expired += 1
        if expired:
            self._on_evict("ttl", expired)

    def _pop_oldest(self) -> None:
        _, (_, _, nbytes) = self._data.popitem(last=False)
        self._bytes -= nbytes

    def _remove(self, session_id: str) -> None:
        _, _, nbytes = self._data.pop(session_id)
        self._bytes -= nbytes


def make_store(settings, on_evict: EvictionHook | None = None) -> SessionStore:
    """The store the settings ask for (a Redis store is checked with `check()` by the caller)."""
    if settings.redis_url:
        from service.redis_store import RedisSessionStore

        log.info("sessions in Redis at %s (TTL %.0f s)", settings.redis_url, settings.session_ttl_s)
        return RedisSessionStore(settings.redis_url, settings.session_ttl_s, settings.redis_prefix)
    log.info(
        "sessions in memory (TTL %.0f s, at most %d sessions / %.0f MB)",
        settings.session_ttl_s, settings.max_sessions, settings.max_session_memory_mb,
    )
    return MemorySessionStore(
        settings.session_ttl_s, settings.max_sessions, int(settings.max_session_memory_mb * 1024 * 1024), on_evict
    )


__all__ = ["Entry", "MISSING", "MemorySessionStore", "SessionState", "SessionStore", "SessionStoreError", "make_store"]
