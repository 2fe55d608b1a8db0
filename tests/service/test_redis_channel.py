"""The session store's pipelined Redis connection (service.redis_channel), against real redis-servers:
replies matched to their callers in order, failures and silences turned into `RedisUnavailable` for
every waiting call, reconnection, and the URL forms (database, password, unix socket, TLS)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import uuid

import hiredis
import pytest
from service_helpers import REDIS_URL, redis_client

from service.redis_channel import RedisChannel, RedisUnavailable


def run(coroutine_function):
    """Run `coroutine_function(channel)` with a channel to the test Redis, closed afterwards."""

    async def main():
        channel = RedisChannel(REDIS_URL, timeout_s=2)
        try:
            return await coroutine_function(channel)
        finally:
            await channel.close()

    redis_client()  # fails loudly, naming the fix, when no Redis runs
    return asyncio.run(main())


@pytest.fixture
def key_prefix():
    prefix = f"gru4rec-test-{uuid.uuid4().hex[:8]}:"
    yield prefix
    r = redis_client()
    keys = list(r.scan_iter(match=prefix + "*"))
    if keys:
        r.delete(*keys)


def test_concurrent_calls_get_their_own_replies_in_one_write_per_loop_pass(key_prefix):
    async def body(channel: RedisChannel):
        await channel.call("PING")
        first = [channel.call("SET", f"{key_prefix}{j}", f"v{j}") for j in range(200)]
        assert await asyncio.gather(*first) == [b"OK"] * 200
        # calls issued while earlier ones are still unanswered (pipelined across passes), mixed with errors
        gets = [asyncio.ensure_future(channel.call("GET", f"{key_prefix}{j}")) for j in range(200)]
        await asyncio.sleep(0)
        errors = [asyncio.ensure_future(channel.call("INCR", f"{key_prefix}{j}")) for j in range(3)]
        more = [asyncio.ensure_future(channel.call("STRLEN", f"{key_prefix}{j}")) for j in range(200)]
        assert await asyncio.gather(*gets) == [f"v{j}".encode() for j in range(200)]
        for error in await asyncio.gather(*errors):  # an error reply is returned, not raised
            assert isinstance(error, hiredis.ReplyError) and "not an integer" in str(error)
        assert await asyncio.gather(*more) == [len(f"v{j}") for j in range(200)]
        assert await channel.call("PING") == b"PONG"  # and the connection goes on
        with pytest.raises(TypeError):
            channel._protocol.send(("SET", f"{key_prefix}x", None))  # refused before it was queued...
        assert await channel.call("ECHO", "next") == b"next"  # ...so the next reply is still the next caller's

    run(body)


def test_a_cancelled_caller_does_not_shift_the_replies_of_the_others(key_prefix):
    async def body(channel: RedisChannel):
        slow = asyncio.ensure_future(channel.call("BLPOP", f"{key_prefix}none", "0.2"))
        await asyncio.sleep(0.05)
        slow.cancel()
        assert await channel.call("ECHO", "mine") == b"mine"

    run(body)


def test_a_dropped_connection_fails_the_calls_waiting_on_it_and_the_next_call_reconnects(key_prefix):
    async def body(channel: RedisChannel):
        my_id = await channel.call("CLIENT", "ID")
        waiting = asyncio.ensure_future(channel.call("BLPOP", f"{key_prefix}none", "5"))
        await asyncio.sleep(0.05)
        redis_client().client_kill_filter(_id=my_id)
        with pytest.raises(RedisUnavailable, match="connection to Redis lost"):
            await waiting
        assert await channel.call("CLIENT", "ID") != my_id  # a new connection

    run(body)


def test_a_redis_that_stops_answering_fails_the_waiting_calls_after_the_timeout(key_prefix):
    async def body(channel: RedisChannel):
        channel.timeout_s = 0.3  # for the next connection
        channel._protocol.close()
        started = time.perf_counter()
        stuck = [asyncio.ensure_future(channel.call("BLPOP", f"{key_prefix}none", "3")) for _ in range(2)]
        for call in stuck:
            with pytest.raises(RedisUnavailable, match="no reply from Redis within 0.3 s"):
                await call
        assert time.perf_counter() - started < 1.5
        assert await channel.call("PING") == b"PONG"

    async def with_a_connection(channel: RedisChannel):
        await channel.call("PING")
        await body(channel)

    run(with_a_connection)


def test_a_busy_but_answering_redis_is_not_timed_out(key_prefix):
    async def body(channel: RedisChannel):
        channel.timeout_s = 0.3
        channel._protocol.close()
        calls = [channel.call("BLPOP", f"{key_prefix}none", "0.2") for _ in range(4)]  # 0.8 s in all
        assert await asyncio.gather(*calls) == [None] * 4

    async def with_a_connection(channel: RedisChannel):
        await channel.call("PING")
        await body(channel)

    run(with_a_connection)


def test_unreachable_and_malformed_urls_are_clear_errors(tmp_path):
    from service.redis_store import RedisSessionStore
    from service.sessions import SessionStoreError

    with pytest.raises(SessionStoreError, match="GRU4REC_REDIS_URL 'http://localhost:6379/0': "):
        RedisSessionStore("http://localhost:6379/0", ttl_s=60)
    with pytest.raises(SessionStoreError, match="GRU4REC_REDIS_URL 'rediss://.*ssl_cert_reqs must be"):
        RedisSessionStore("rediss://localhost:6379/0?ssl_cert_reqs=maybe", ttl_s=60)
    with pytest.raises(SessionStoreError, match="No such file"):
        RedisSessionStore(f"rediss://localhost:6379/0?ssl_ca_certs={tmp_path / 'missing.pem'}", ttl_s=60)

    async def unreachable():
        channel = RedisChannel("redis://127.0.0.1:1/0", timeout_s=2)
        outcomes = await asyncio.gather(channel.call("PING"), channel.call("PING"), return_exceptions=True)
        await channel.close()
        return outcomes

    for outcome in asyncio.run(unreachable()):
        assert isinstance(outcome, RedisUnavailable) and str(outcome).startswith("127.0.0.1:1: ")


def test_the_database_in_the_url_is_selected(key_prefix):
    other_db = REDIS_URL.rsplit("/", 1)[0] + "/13"

    async def main():
        channel = RedisChannel(other_db)
        await channel.call("SET", f"{key_prefix}db", "13")
        await channel.close()

    asyncio.run(main())
    import redis

    r = redis.Redis.from_url(other_db)
    try:
        assert r.get(f"{key_prefix}db") == b"13" and redis_client().get(f"{key_prefix}db") is None
    finally:
        r.delete(f"{key_prefix}db")
        r.close()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- a private redis-server: unix socket, password, TLS -------------------------------------------------
@pytest.fixture
def private_redis(tmp_path):
    """Start a redis-server of our own with the given extra arguments; stopped afterwards."""
    servers = []

    def start(*args: str) -> None:
        server = shutil.which("redis-server")
        assert server, "redis-server is not installed: run `make redis`"
        command = [server, "--port", "0", "--save", "", "--appendonly", "no", "--dir", str(tmp_path), *args]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        servers.append(proc)
        deadline = time.monotonic() + 10
        for line in proc.stdout:
            if "ready to accept connections" in line.lower():
                return
            assert time.monotonic() < deadline and proc.poll() is None, f"redis-server did not start: {line}"
        raise AssertionError("redis-server exited")

    yield start
    for proc in servers:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_unix_socket_with_a_password_and_a_database(private_redis, tmp_path):
    socket = tmp_path / "redis.sock"
    private_redis("--unixsocket", str(socket), "--requirepass", "s3cret")

    async def main():
        good = RedisChannel(f"unix://:s3cret@{socket}?db=2")
        assert await good.call("SET", "k", "v") == b"OK" and await good.call("GET", "k") == b"v"
        info = (await good.call("CLIENT", "INFO")).decode()
        assert " db=2 " in info
        await good.close()
        wrong = RedisChannel(f"unix://:wrong@{socket}")
        with pytest.raises(RedisUnavailable, match=f"{socket}: AUTH refused: "):
            await wrong.call("PING")
        await wrong.close()

    asyncio.run(main())


def test_tls(private_redis, tmp_path):
    openssl = shutil.which("openssl")
    assert openssl, "openssl is needed to make the test certificate"
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True)
    port = free_port()
    private_redis("--tls-port", str(port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                  "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no")

    async def main():
        trusted = RedisChannel(f"rediss://localhost:{port}/0?ssl_ca_certs={cert}")
        assert await trusted.call("PING") == b"PONG"
        await trusted.close()
        untrusted = RedisChannel(f"rediss://localhost:{port}/0")  # the self-signed certificate is refused
        with pytest.raises(RedisUnavailable, match="certificate verify failed"):
            await untrusted.call("PING")
        await untrusted.close()
        unchecked = RedisChannel(f"rediss://localhost:{port}/0?ssl_cert_reqs=none")
        assert await unchecked.call("PING") == b"PONG"
        await unchecked.close()

    asyncio.run(main())
