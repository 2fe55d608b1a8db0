"""One pipelined connection to Redis, for the session store's scripts.

Why not redis-py's asyncio client, which the store used before: every click calls a Lua script or two,
and redis-py's layers in Python (pipeline, retry, events, connection pool) cost 120-147 µs of the
caller's CPU per call one at a time and 73-96 four at a time, its parser being hiredis already. Here
the protocol is packed and parsed by hiredis (the Redis project's C library) and this module is only
the asyncio glue: 55-58 µs one at a time, 18-21 four at a time (`benchmarks/redis_calls.py`, the same
script alternated, on an AMD EPYC Zen 4 core):

- one connection per process, opened on first use and again after a failure;
- the commands issued during one pass of the event loop go out in one write, and commands are written
  as they come, without waiting for earlier replies (Redis answers in order, so replies are matched
  to callers first in, first out);
- a reply that does not arrive within `timeout_s`, or a connection that drops, fails every call
  waiting on that connection with `RedisUnavailable`, and the next call connects afresh;
- an error reply (a Lua error, NOSCRIPT) is returned to its caller as a `hiredis.ReplyError`.

The URL is read by redis-py's parser, so it means what it means to redis-py: `redis://`, `rediss://`
(TLS, with the `ssl_*` query options) and `unix://`, with user name, password and database.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque

import hiredis


class RedisUnavailable(Exception):
    """The connection could not be made, dropped, or stopped answering."""


class _Resp(asyncio.Protocol):
    """The protocol of one connection: writes commands, matches replies to waiting futures."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float) -> None:
        self._loop = loop
        self._timeout_s = timeout_s
        self._reader = hiredis.Reader()
        self._transport: asyncio.Transport | None = None
        self._outgoing: list[bytes] = []
        self._waiting: deque[asyncio.Future] = deque()
        self._answered = 0  # replies so far, for the timeout check
        self._watchdog: asyncio.TimerHandle | None = None
        self.failure: RedisUnavailable | None = None  # set once the connection is unusable

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def send(self, command: tuple) -> asyncio.Future:
        if self.failure is not None:
            raise self.failure
        packed = hiredis.pack_command(command)  # before anything is queued: a TypeError leaves no trace
        future = self._loop.create_future()
        self._waiting.append(future)
        self._outgoing.append(packed)
        if len(self._outgoing) == 1:  # after the callbacks already due: the other requests of this pass
            self._loop.call_soon(self._flush)
        if self._watchdog is None:
            self._watchdog = self._loop.call_later(self._timeout_s, self._check, self._answered)
        return future

    def _flush(self) -> None:
        outgoing, self._outgoing = self._outgoing, []
        if outgoing and self.failure is None:
            self._transport.writelines(outgoing)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        try:
            while (reply := self._reader.gets()) is not False:
                self._answered += 1
                future = self._waiting.popleft()
                if not future.done():  # its caller may have been cancelled meanwhile
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:
            self._fail(RedisUnavailable(f"unexpected data from Redis ({exc})"))

    def _check(self, answered_before: int) -> None:
        self._watchdog = None
        if not self._waiting:
            return
        if self._answered == answered_before:
            self._fail(RedisUnavailable(f"no reply from Redis within {self._timeout_s:g} s"))
        else:
            self._watchdog = self._loop.call_later(self._timeout_s, self._check, self._answered)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisUnavailable(f"connection to Redis lost ({exc or 'closed'})"))

    def _fail(self, failure: RedisUnavailable) -> None:
        if self.failure is None:
            self.failure = failure
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(self.failure)
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        self._fail(RedisUnavailable("connection closed"))


def _ssl_context(options: dict) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
    if options.get("ssl_certfile"):
        context.load_cert_chain(options["ssl_certfile"], options.get("ssl_keyfile"))
    modes = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
    requirement = str(options.get("ssl_cert_reqs", "required")).lower()
    if requirement not in modes:
        raise ValueError(f"ssl_cert_reqs must be none, optional or required, not {requirement!r}")
    check_hostname = str(options.get("ssl_check_hostname", True)).lower() not in ("false", "0", "no")
    context.check_hostname = requirement == "required" and check_hostname
    context.verify_mode = modes[requirement]
    return context


class RedisChannel:
    """Calls to Redis over one pipelined connection (see the module docstring)."""

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        from redis.connection import SSLConnection, parse_url  # here: importing redis-py takes ~80 ms

        self.url = url
        self.timeout_s = timeout_s
        options = parse_url(url)  # ValueError for a URL redis-py would refuse
        self._path = options.get("path")
        self._host = options.get("host", "localhost")
        self._port = int(options.get("port", 6379))
        self._ssl = _ssl_context(options) if options.get("connection_class") is SSLConnection else None
        self._handshake = []
        if options.get("password") is not None:
            user = options.get("username")
            self._handshake.append(("AUTH", user, options["password"]) if user else ("AUTH", options["password"]))
        if int(options.get("db", 0) or 0):
            self._handshake.append(("SELECT", int(options["db"])))
        self._protocol: _Resp | None = None
        self._connecting: asyncio.Task | None = None

    async def call(self, *command: str | bytes | int | float):
        """One command's reply (a `hiredis.ReplyError` for an error reply); `RedisUnavailable` when
        Redis cannot be reached or does not answer."""
        protocol = self._protocol
        if protocol is None or protocol.failure is not None:
            protocol = await self._connected()
        return await protocol.send(command)

    async def _connected(self) -> _Resp:
        if self._connecting is None:  # the calls that find no connection share one attempt
            self._connecting = asyncio.ensure_future(self._connect())
        try:
            return await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None

    async def _connect(self) -> _Resp:
        loop = asyncio.get_running_loop()
        where = self._path or f"{self._host}:{self._port}"
        try:
            async with asyncio.timeout(self.timeout_s):
                if self._path:
                    _, protocol = await loop.create_unix_connection(
                        lambda: _Resp(loop, self.timeout_s), self._path, ssl=self._ssl
                    )
                else:
                    _, protocol = await loop.create_connection(
                        lambda: _Resp(loop, self.timeout_s), self._host, self._port, ssl=self._ssl
                    )
                for command in self._handshake:
                    reply = await protocol.send(command)
                    if isinstance(reply, hiredis.ReplyError):
                        protocol.close()
                        raise RedisUnavailable(f"{where}: {command[0]} refused: {reply}")
        except TimeoutError:
            raise RedisUnavailable(f"{where}: no answer within {self.timeout_s:g} s") from None
        except OSError as exc:
            raise RedisUnavailable(f"{where}: {exc.strerror or exc}") from None
        self._protocol = protocol
        return protocol

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        if self._protocol is not None:
            self._protocol.close()
            self._protocol = None
