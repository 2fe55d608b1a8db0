"""Session stores: where a session's GRU state and recent clicks live between requests.

Two implementations behind one interface (SessionStore):

* MemorySessionStore (default): in this process; LRU with a sliding TTL, bounded by a session count
  and an (estimated) memory budget. Sessions are not shared between worker processes.
* RedisSessionStore (GRU4REC_REDIS_URL): one Redis hash per session with a TTL, so every worker and
  replica sees the same sessions. Updates are optimistic transactions (WATCH/MULTI/EXEC) so two
  clicks of one session arriving at two workers at once are both applied, one after the other.

A state records the model version it was computed with. The stores never interpret it; the
recommender rebuilds a state from its stored clicks when the serving model has changed. Only the last
GRU4REC_MAX_SESSION_CLICKS clicks are stored, so a rebuilt state of a longer session starts there.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from service.errors import SessionConflict, SessionStoreError

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
        return 240 + self.hidden.nbytes + sum(57 + len(c) for c in self.clicks) + 36 * len(self.indices)

    def seen(self) -> list[int]:
        """Known items among the remembered clicks (what exclude_seen hides)."""
        return [i for i in self.indices if i >= 0]


Updater = Callable[[SessionState | None], SessionState]


class SessionStore(ABC):
    """The interface the recommender uses; implementations must be safe to call from many threads."""

    kind: str = "abstract"

    @abstractmethod
    def get(self, session_id: str) -> SessionState | None:
        """The session's state, or None if unknown or expired (does not refresh its TTL)."""

    @abstractmethod
    def update(self, session_id: str, fn: Updater) -> SessionState:
        """Atomically replace the session's state by fn(current or None); refreshes its TTL."""

    @abstractmethod
    def delete(self, session_id: str) -> bool:
        """Forget a session; True if it existed."""

    @abstractmethod
    def size(self) -> int:
        """Live sessions (for metrics)."""

    def ping(self) -> bool:
        """Whether the store can serve requests (for /readyz)."""
        return True

    def close(self) -> None:
        """Release connections."""


class MemorySessionStore(SessionStore):
    """In-process LRU store with a sliding TTL, a session-count bound and a memory bound."""

    kind = "memory"
    _STRIPES = 64

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
        self._lock = threading.Lock()
        # updates of one session are serialised; different sessions proceed in parallel
        self._session_locks = [threading.Lock() for _ in range(self._STRIPES)]

    def get(self, session_id: str) -> SessionState | None:
        with self._lock:
            entry = self._data.get(session_id)
            if entry is None:
                return None
            if entry[1] <= self._clock():
                self._remove(session_id)
                self._on_evict("ttl", 1)
                return None
            return entry[0]

    def update(self, session_id: str, fn: Updater) -> SessionState:
        with self._session_locks[hash(session_id) % self._STRIPES]:
            new = fn(self.get(session_id))
            self._put(session_id, new)
            return new

    def delete(self, session_id: str) -> bool:
        with self._lock:
            entry = self._data.get(session_id)
            if entry is None:
                return False
            self._remove(session_id)
            return entry[1] > self._clock()

    def size(self) -> int:
        with self._lock:
            self._expire(self._clock())
            return len(self._data)

    def memory_bytes(self) -> int:
        return self._bytes

    def _put(self, session_id: str, state: SessionState) -> None:
        now = self._clock()
        nbytes = state.nbytes()
        with self._lock:
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


class RedisSessionStore(SessionStore):
    """Sessions in Redis: hash `{prefix}s:{id}` with fields v, h, c, i, n, k and a TTL.

    A sorted set `{prefix}sessions` scores every session by its expiry time, so the number of live
    sessions can be counted without scanning the key space.
    """

    kind = "redis"
    MAX_RETRIES = 50

    def __init__(self, url: str, ttl_s: float, prefix: str = "gru4rec:", client=None) -> None:
        import redis

        self._redis = redis
        self.url = url
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.prefix = prefix
        self._index = f"{prefix}sessions"
        try:
            self._client = client or redis.Redis.from_url(
                url, socket_timeout=5, socket_connect_timeout=5, health_check_interval=30
            )
        except ValueError as exc:
            raise SessionStoreError(f"GRU4REC_REDIS_URL {url!r}: {exc}") from None

    def _key(self, session_id: str) -> str:
        return f"{self.prefix}s:{session_id}"

    def check(self) -> None:
        """Fail loudly (at start-up) if Redis cannot be reached."""
        try:
            self._client.ping()
        except self._redis.RedisError as exc:
            raise SessionStoreError(f"cannot reach Redis at {self.url}: {exc}") from None

    def ping(self) -> bool:
        try:
            return bool(self._client.ping())
        except self._redis.RedisError:
            return False

    def get(self, session_id: str) -> SessionState | None:
        try:
            return _decode(self._client.hgetall(self._key(session_id)))
        except self._redis.RedisError as exc:
            raise SessionStoreError(f"Redis: {exc}") from None

    def update(self, session_id: str, fn: Updater) -> SessionState:
        key = self._key(session_id)
        try:
            with self._client.pipeline(transaction=True) as pipe:
                for attempt in range(self.MAX_RETRIES):
                    try:
                        pipe.watch(key)
                        new = fn(_decode(pipe.hgetall(key)))
                        expires = time.time() + self.ttl_ms / 1000
                        pipe.multi()
                        pipe.hset(key, mapping=_encode(new))
                        pipe.pexpire(key, self.ttl_ms)
                        pipe.zadd(self._index, {session_id: expires})
                        pipe.execute()
                        return new
                    except self._redis.WatchError:
                        # another worker changed the session meanwhile: back off a little, then redo
                        # the update on its new state (random, so competing writers spread out)
                        time.sleep(random.uniform(0, 0.0005 * (attempt + 1)))
                        continue
        except self._redis.RedisError as exc:
            raise SessionStoreError(f"Redis: {exc}") from None
        raise SessionConflict(f"session {session_id!r} changed {self.MAX_RETRIES} times while being updated; retry")

    def delete(self, session_id: str) -> bool:
        try:
            pipe = self._client.pipeline(transaction=True)
            pipe.delete(self._key(session_id))
            pipe.zrem(self._index, session_id)
            deleted, _ = pipe.execute()
            return bool(deleted)
        except self._redis.RedisError as exc:
            raise SessionStoreError(f"Redis: {exc}") from None

    def size(self) -> int:
        try:
            pipe = self._client.pipeline(transaction=True)
            pipe.zremrangebyscore(self._index, "-inf", time.time())
            pipe.zcard(self._index)
            return int(pipe.execute()[1])
        except self._redis.RedisError as exc:
            raise SessionStoreError(f"Redis: {exc}") from None

    def close(self) -> None:
        self._client.close()


def _encode(state: SessionState) -> dict[str, bytes | str | int]:
    return {
        "v": state.model_version,
        "h": np.ascontiguousarray(state.hidden, dtype=np.float32).tobytes(),
        "c": json.dumps(list(state.clicks), ensure_ascii=False),
        "i": np.asarray(state.indices, dtype=np.int32).tobytes(),
        "n": state.n_clicks,
        "k": state.n_known,
    }


def _decode(raw: dict[bytes, bytes]) -> SessionState | None:
    if not raw:
        return None
    try:
        return SessionState(
            model_version=raw[b"v"].decode(),
            hidden=np.frombuffer(raw[b"h"], dtype=np.float32).copy(),
            clicks=tuple(json.loads(raw[b"c"])),
            indices=tuple(np.frombuffer(raw[b"i"], dtype=np.int32).tolist()),
            n_clicks=int(raw[b"n"]),
            n_known=int(raw[b"k"]),
        )
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        # a foreign or damaged entry: treat the session as new rather than failing every request
        log.warning("ignoring an unreadable session entry (%s)", exc)
        return None


def make_store(settings, on_evict: EvictionHook | None = None) -> SessionStore:
    """The store the settings ask for; a Redis store is checked to be reachable first."""
    if settings.redis_url:
        store = RedisSessionStore(settings.redis_url, settings.session_ttl_s, settings.redis_prefix)
        store.check()
        log.info("sessions in Redis at %s (TTL %.0f s)", settings.redis_url, settings.session_ttl_s)
        return store
    log.info(
        "sessions in memory (TTL %.0f s, at most %d sessions / %.0f MB)",
        settings.session_ttl_s, settings.max_sessions, settings.max_session_memory_mb,
    )
    return MemorySessionStore(
        settings.session_ttl_s, settings.max_sessions, int(settings.max_session_memory_mb * 1024 * 1024), on_evict
    )
