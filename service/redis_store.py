"""Sessions in Redis, shared by every worker and replica: one round trip per click in the usual case.

Each session is one Redis string `{prefix}v2:{session_id}` (a binary record, see `encode`) with the
session TTL; a sorted set `{prefix}sessions` scores every session by its expiry time, so live sessions
can be counted without scanning the key space.

A write is a compare-and-set in a Lua script: it stores the new record only if the stored one still
begins with the 12 bytes (`token`: magic and a random tag) of the record the new state was computed
from, and otherwise returns the stored record, so the caller recomputes without another read. Each
process remembers the records it wrote last (a bounded LRU), so a session whose previous click came
to the same process needs no read at all: one round trip per click. A stale memory costs nothing but
the retry, since the compare-and-set sees it.

An entry that cannot be read (damaged bytes, a state of the wrong size, a key of another type) is a
new session to the caller, which logs it and overwrites it; it never fails a request.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import struct
import time
from collections import OrderedDict

import hiredis
import numpy as np
import orjson

from service.errors import SessionStoreError
from service.redis_channel import RedisChannel, RedisUnavailable
from service.sessions import MISSING, Entry, SessionState, SessionStore

log = logging.getLogger(__name__)

MAGIC = b"G4S2"
TOKEN_BYTES = 12  # MAGIC + 8 random bytes
_HEADER = struct.Struct("<4s8sQQIHI")  # magic, tag, n_clicks, n_known, state floats, version bytes, indices

_READ = """
local t = redis.call('TYPE', KEYS[1])['ok']
if t == 'none' then return {0} end
if t ~= 'string' then return {2, t} end
if ARGV[1] ~= '0' then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
end
return {1, redis.call('GET', KEYS[1])}
"""

_WRITE = """
local t = redis.call('TYPE', KEYS[1])['ok']
local cur = nil
local token = ''
if t == 'string' then
  cur = redis.call('GET', KEYS[1])
  token = string.sub(cur, 1, 12)
elseif t ~= 'none' then
  token = '\\0' .. t
end
if token ~= ARGV[1] then
  if t == 'none' then return {0} end
  if t == 'string' then return {1, cur} end
  return {2, t}
end
if t ~= 'string' and t ~= 'none' then redis.call('DEL', KEYS[1]) end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
return {3}
"""

_DELETE = """
local n = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return n
"""

_SIZE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
return redis.call('ZCARD', KEYS[1])
"""


class _Script:
    """A Lua script, run by its SHA1; loaded (SCRIPT LOAD, kept until Redis restarts or flushes its
    scripts) when Redis answers NOSCRIPT, then run again."""

    def __init__(self, source: str) -> None:
        self.source = source.strip()
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    async def __call__(self, redis: RedisChannel, keys: list, args: list):
        try:
            reply = await redis.call("EVALSHA", self.sha, len(keys), *keys, *args)
            if isinstance(reply, hiredis.ReplyError) and str(reply).startswith("NOSCRIPT"):
                loaded = await redis.call("SCRIPT", "LOAD", self.source)
                if isinstance(loaded, hiredis.ReplyError):
                    raise SessionStoreError(f"Redis: cannot load a session script: {loaded}")
                reply = await redis.call("EVALSHA", self.sha, len(keys), *keys, *args)
        except RedisUnavailable as exc:
            raise SessionStoreError(f"Redis: {exc}") from None
        if isinstance(reply, hiredis.ReplyError):
            raise SessionStoreError(f"Redis: {reply}")
        return reply


_read, _write, _delete, _size = map(_Script, (_READ, _WRITE, _DELETE, _SIZE))


def encode(state: SessionState) -> bytes:
    version = state.model_version.encode()
    hidden = np.ascontiguousarray(state.hidden, dtype=np.float32)
    header = _HEADER.pack(
        MAGIC, os.urandom(8), state.n_clicks, state.n_known, hidden.size, len(version), len(state.indices)
    )
    indices = np.asarray(state.indices, dtype=np.int32).tobytes()
    return b"".join((header, version, hidden.tobytes(), indices, orjson.dumps(state.clicks)))


def decode(raw: bytes) -> SessionState:
    """The state in a record; ValueError for anything that is not a complete record of this format."""
    if len(raw) < _HEADER.size or raw[:4] != MAGIC:
        raise ValueError("not a session record of this version")
    _, _, n_clicks, n_known, n_floats, n_version, n_indices = _HEADER.unpack_from(raw)
    pos = _HEADER.size
    version = raw[pos : pos + n_version].decode()
    pos += n_version
    hidden = np.frombuffer(raw, dtype=np.float32, count=n_floats, offset=pos).copy()
    pos += 4 * n_floats
    indices = tuple(np.frombuffer(raw, dtype=np.int32, count=n_indices, offset=pos).tolist())
    pos += 4 * n_indices
    clicks = orjson.loads(raw[pos:])
    if not isinstance(clicks, list) or len(clicks) != n_indices or not all(isinstance(c, str) for c in clicks):
        raise ValueError("click list does not match the record")
    if n_known > n_clicks or n_indices > n_clicks:
        raise ValueError("inconsistent click counts")
    return SessionState(version, hidden, tuple(clicks), indices, n_clicks, n_known)


def _entry(raw: bytes | None) -> Entry:
    if raw is None:
        return MISSING
    token = raw[:TOKEN_BYTES]
    try:
        return Entry(decode(raw), token)
    except (ValueError, UnicodeDecodeError, orjson.JSONDecodeError, struct.error) as exc:
        return Entry(None, token, damaged=f"unreadable record ({exc})")


def _wrong_type(kind: bytes | str) -> Entry:
    kind = kind.decode() if isinstance(kind, bytes) else kind
    return Entry(None, b"\0" + kind.encode(), damaged=f"a Redis {kind}, not a session record")


class RedisSessionStore(SessionStore):
    """The Redis store; every method is a single script, so a single round trip."""

    kind = "redis"
    CACHE_SIZE = 20_000  # sessions whose last record this process remembers

    def __init__(self, url: str, ttl_s: float, prefix: str = "gru4rec:", timeout_s: float = 5.0) -> None:
        self.url = url
        self.ttl_s = ttl_s
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.prefix = prefix
        self._index = f"{prefix}sessions"
        try:
            self._redis = RedisChannel(url, timeout_s=timeout_s)
        except (ValueError, OSError) as exc:  # a URL redis-py refuses; TLS files that cannot be read
            raise SessionStoreError(f"GRU4REC_REDIS_URL {url!r}: {exc}") from None
        self._recent: OrderedDict[str, Entry] = OrderedDict()

    def _key(self, session_id: str) -> str:
        return f"{self.prefix}v2:{session_id}"

    async def check(self) -> None:
        """Fail loudly (at start-up) if Redis cannot be reached."""
        try:
            reply = await self._redis.call("PING")
        except RedisUnavailable as exc:
            raise SessionStoreError(f"cannot reach Redis at {self.url}: {exc}") from None
        if isinstance(reply, hiredis.ReplyError):
            raise SessionStoreError(f"cannot use Redis at {self.url}: {reply}")

    async def ping(self) -> bool:
        try:
            return await self._redis.call("PING") == b"PONG"
        except RedisUnavailable:
            return False

    async def read(self, session_id: str, touch: bool = False) -> Entry:
        if not touch:
            remembered = self._recent.get(session_id)
            if remembered is not None:
                return remembered
        args = [self.ttl_ms, time.time() + self.ttl_s, session_id] if touch else ["0"]
        reply = await _read(self._redis, [self._key(session_id), self._index], args)
        if reply[0] == 0:
            return MISSING
        return _entry(reply[1]) if reply[0] == 1 else _wrong_type(reply[1])

    async def write(self, session_id: str, state: SessionState, expected: Entry) -> Entry | None:
        record = encode(state)
        token = b"" if expected.token is None else expected.token
        args = [token, record, self.ttl_ms, time.time() + self.ttl_s, session_id]
        try:
            reply = await _write(self._redis, [self._key(session_id), self._index], args)
        except SessionStoreError:
            self._recent.pop(session_id, None)
            raise
        if reply[0] == 3:
            self._remember(session_id, Entry(state, record[:TOKEN_BYTES]))
            return None
        current = MISSING if reply[0] == 0 else _entry(reply[1]) if reply[0] == 1 else _wrong_type(reply[1])
        self._remember(session_id, current)
        return current

    def _remember(self, session_id: str, entry: Entry) -> None:
        recent = self._recent
        if entry.state is None:
            recent.pop(session_id, None)
            return
        recent[session_id] = entry
        recent.move_to_end(session_id)
        if len(recent) > self.CACHE_SIZE:
            recent.popitem(last=False)

    async def delete(self, session_id: str) -> bool:
        self._recent.pop(session_id, None)
        return bool(await _delete(self._redis, [self._key(session_id), self._index], [session_id]))

    async def size(self) -> int:
        return int(await _size(self._redis, [self._index], [time.time()]))

    async def close(self) -> None:
        await self._redis.close()


def check_reachable(url: str) -> None:
    """Ping Redis the way the workers will reach it, for `gru4rec serve` before it starts any worker."""

    async def ping() -> None:
        store = RedisSessionStore(url, ttl_s=1)
        try:
            await store.check()
        finally:
            await store.close()

    asyncio.run(ping())
