"""Session stores: the in-process LRU/TTL store, the Redis store against a real redis-server, requests
of one session applied one after the other (in one process and across processes), and sessions
surviving a model change (rebuilt from their clicks)."""

from __future__ import annotations

import asyncio
import time
import uuid

import numpy as np
import pytest
from service_helpers import REDIS_URL, client, copy_model, model_a, model_b, redis_client, swap_model, top_ids, top_scores

from service.batcher import Batcher
from service.engine import load_bundle
from service.metrics import Metrics
from service.recommender import Filters, Recommender
from service.redis_channel import RedisChannel
from service.redis_store import RedisSessionStore, decode, encode
from service.sessions import MISSING, MemorySessionStore, SessionState, SessionStoreError, make_store


def state(version: str = "v1", n: int = 1, size: int = 16) -> SessionState:
    clicks = tuple(f"i{j}" for j in range(n))
    return SessionState(version, np.full(size, n, dtype=np.float32), clicks, tuple(range(n)), n, n)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- in-process store ----------------------------------------------------------------------------------
def test_memory_store_lru_eviction():
    evicted: list[tuple[str, int]] = []
    store = MemorySessionStore(ttl_s=60, max_sessions=3, max_bytes=10**9, on_evict=lambda r, n: evicted.append((r, n)))
    for sid in "abc":
        store.put(sid, state(n=1))
    assert store.get("a") is not None  # a plain read does not refresh recency...
    store.put("a", store.get("a"))  # ...a write does: b is now the least recently used
    store.put("d", state())
    assert store.get("b") is None
    assert all(store.get(s) is not None for s in "acd")
    assert asyncio.run(store.size()) == 3 and evicted == [("lru", 1)]


def test_memory_store_memory_bound():
    one = state(n=10).nbytes()
    evicted: list[tuple[str, int]] = []
    store = MemorySessionStore(
        ttl_s=60, max_sessions=1000, max_bytes=int(one * 4.5), on_evict=lambda r, n: evicted.append((r, n))
    )
    for j in range(10):
        store.put(f"s{j}", state(n=10))
    assert asyncio.run(store.size()) == 4
    assert store.memory_bytes() <= one * 4.5
    assert [store.get(f"s{j}") is not None for j in range(10)] == [False] * 6 + [True] * 4
    assert sum(n for r, n in evicted if r == "memory") == 6


def test_memory_store_ttl():
    clock = FakeClock()
    evicted: list[tuple[str, int]] = []
    store = MemorySessionStore(
        ttl_s=10, max_sessions=100, max_bytes=10**9, on_evict=lambda r, n: evicted.append((r, n)), clock=clock
    )
    store.put("a", state())  # expires at 10
    clock.now += 6
    store.put("b", state())  # expires at 16
    clock.now += 3
    assert store.get("a", touch=True) is not None  # using a session extends its life: now expires at 19
    clock.now += 5
    assert store.get("a") is not None and store.get("b") is not None
    clock.now += 3  # 17
    assert store.get("b") is None and store.get("a") is not None
    clock.now += 3  # 20
    assert asyncio.run(store.size()) == 0
    assert sum(n for r, n in evicted if r == "ttl") == 2
    assert asyncio.run(store.delete("a")) is False


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(model_a(), warmup_steps=1)


async def _clicks_at_once(recommenders: list[Recommender], bundle, session_id: str, items: list[str]) -> None:
    """Every click sent at once, spread over the recommenders (as over processes)."""
    await asyncio.gather(*(
        recommenders[j % len(recommenders)].click(bundle, session_id, item, Filters(k=5)) for j, item in enumerate(items)
    ))


def test_concurrent_clicks_of_one_session_are_applied_one_after_the_other(bundle):
    items = [str(1000 + j % 60) for j in range(40)]

    async def run() -> SessionState:
        batcher = Batcher(Metrics(), max_batch=16, max_wait_s=0.002)
        batcher.start()
        store = MemorySessionStore(60, 100, 10**9)
        try:
            await _clicks_at_once([Recommender(store, batcher, Metrics(), 100, 100, 200)], bundle, "x", items)
            return (await store.read("x")).state
        finally:
            batcher.close()

    final = asyncio.run(run())
    assert final.n_clicks == 40 and sorted(final.clicks) == sorted(items)
    replay = bundle.advance(np.zeros((1, bundle.state_size), np.float32), [list(final.indices)])[0]
    np.testing.assert_allclose(final.hidden, replay, rtol=1e-5, atol=1e-6)  # the state of the clicks, in that order


# -- Redis store -----------------------------------------------------------------------------------------
@pytest.fixture
def redis_prefix():
    r = redis_client()  # fails (not skips) without Redis
    prefix = f"gru4rec-test-{uuid.uuid4().hex[:8]}:"
    yield prefix
    keys = list(r.scan_iter(match=prefix + "*"))
    if keys:
        r.delete(*keys)
    r.close()


def test_record_roundtrip():
    original = state(n=3)
    original.clicks = ("ü-ñ", "12", 'quote"s')
    original.indices = (-1, 5, 7)
    back = decode(encode(original))
    assert back.model_version == "v1" and back.clicks == original.clicks and back.indices == (-1, 5, 7)
    assert back.n_clicks == 3 and back.n_known == 3 and back.hidden.dtype == np.float32
    np.testing.assert_array_equal(back.hidden, original.hidden)
    for damaged in (b"", b"G4S2", encode(original)[:-3], b"x" * 200, encode(original).replace(b"12", b"\xff\xfe")):
        with pytest.raises(ValueError):
            decode(damaged)


def test_redis_store_roundtrip_ttl_and_conditional_write(redis_prefix):
    async def run() -> None:
        store = RedisSessionStore(REDIS_URL, ttl_s=0.4, prefix=redis_prefix)
        other = RedisSessionStore(REDIS_URL, ttl_s=0.4, prefix=redis_prefix)  # another process
        await store.check()
        assert await store.write("a", state(n=3), MISSING) is None
        entry = await other.read("a")
        assert entry.state.n_clicks == 3 and entry.state.clicks == ("i0", "i1", "i2")
        assert await other.write("a", state(n=4), entry) is None
        conflict = await store.write("a", state(n=5), await store.read("a"))  # store's memory of "a" is stale
        assert conflict is not None and conflict.state.n_clicks == 4  # refused, with the current record
        assert await store.write("a", state(n=5), conflict) is None
        assert (await other.read("a", touch=True)).state.n_clicks == 5
        assert await store.size() == 1
        await asyncio.sleep(0.6)
        assert (await other.read("a", touch=True)) == MISSING
        assert await store.size() == 0
        await store.write("b", state(), MISSING)
        assert await store.delete("b") is True and await store.delete("b") is False
        await store.close()
        await other.close()

    asyncio.run(run())


def test_calls_of_one_loop_pass_share_a_write_and_keep_their_own_answers(redis_prefix, monkeypatch):
    """Reads and conditional writes issued together go to Redis in one write to the socket; each caller
    still gets its own reply, a refused write included, and scripts Redis has forgotten are loaded again."""
    from service import redis_channel

    flushed = []
    flush = redis_channel._Resp._flush

    def counting(self):
        flushed.append(len(self._outgoing))
        flush(self)

    monkeypatch.setattr(redis_channel._Resp, "_flush", counting)

    async def run() -> None:
        store = RedisSessionStore(REDIS_URL, ttl_s=30, prefix=redis_prefix)
        other = RedisSessionStore(REDIS_URL, ttl_s=30, prefix=redis_prefix)
        await asyncio.gather(store.check(), other.check())
        await asyncio.gather(*(store.write(f"s{j}", state(n=j + 1), MISSING) for j in range(6)))
        assert flushed[-1] == 6
        stale = await other.read("s0")
        assert await other.write("s0", state(n=7), stale) is None
        redis_client().script_flush()  # as after a Redis restart
        replies = await asyncio.gather(
            store.write("s0", state(n=8), await store.read("s0")),  # its memory of s0 is stale: refused
            store.write("s1", state(n=9), await store.read("s1")),
            other.read("s2"), other.read("s3"), other.read("missing"),
        )
        assert replies[0] is not None and replies[0].state.n_clicks == 7  # refused, with the current record
        assert replies[1] is None
        assert [r.state.n_clicks for r in replies[2:4]] == [3, 4] and replies[4] == MISSING
        # each store's scripts in one write: EVALSHA (NOSCRIPT), SCRIPT LOAD, EVALSHA again
        assert sorted(flushed[-6:]) == [2, 2, 2, 3, 3, 3]
        assert (await other.read("s1", touch=True)).state.n_clicks == 9
        for s in (store, other):
            await s.close()

    asyncio.run(run())


def test_a_failed_connection_fails_every_caller_with_a_store_error():
    async def run() -> list:
        store = RedisSessionStore("redis://127.0.0.1:1/0", ttl_s=30)  # where no Redis listens
        try:
            return await asyncio.gather(*(store.write(f"s{j}", state(), MISSING) for j in range(3)), store.read("s9"),
                                        store.size(), store.delete("s1"), return_exceptions=True)
        finally:
            await store.close()

    for outcome in asyncio.run(run()):
        assert isinstance(outcome, SessionStoreError) and "Redis: 127.0.0.1:1:" in str(outcome)


def test_concurrent_clicks_through_several_redis_stores_are_not_lost(redis_prefix, bundle):
    items = [str(1000 + j % 60) for j in range(30)]

    async def run() -> SessionState:
        batcher = Batcher(Metrics(), max_batch=16, max_wait_s=0.001)
        batcher.start()
        stores = [RedisSessionStore(REDIS_URL, 30, redis_prefix) for _ in range(3)]
        try:
            await _clicks_at_once([Recommender(s, batcher, Metrics(), 100, 100, 200) for s in stores], bundle, "x", items)
            return (await stores[0].read("x", touch=True)).state
        finally:
            batcher.close()
            for s in stores:
                await s.close()

    final = asyncio.run(run())
    assert final.n_clicks == 30 and sorted(final.clicks) == sorted(items)
    replay = bundle.advance(np.zeros((1, bundle.state_size), np.float32), [list(final.indices)])[0]
    np.testing.assert_allclose(final.hidden, replay, rtol=1e-5, atol=1e-6)


def test_two_apps_share_sessions_through_redis(redis_prefix):
    overrides = {"redis_url": REDIS_URL, "redis_prefix": redis_prefix}
    with client(model_a(), **overrides) as one, client(model_a(), **overrides) as two:
        assert one.get("/readyz").json()["session_store"] == "redis"
        clicks = ["1001", "1002", "nope", "1003"]
        for j, item in enumerate(clicks):
            (one if j % 2 else two).post("/v1/sessions/shared-1/events", json={"item_id": item})
        from_two = two.post("/v1/recommend", json={"session_id": "shared-1", "k": 10, "exclude_seen": True})
        from_one = one.post("/v1/recommend", json={"session_id": "shared-1", "k": 10, "exclude_seen": True})
        stateless = one.post("/v1/recommend", json={"items": clicks, "k": 10, "exclude_seen": True})
        assert top_ids(from_one) == top_ids(from_two) == top_ids(stateless)
        np.testing.assert_allclose(top_scores(from_two), top_scores(stateless), rtol=1e-5, atol=1e-6)
        assert "gru4rec_sessions 1.0" in one.get("/metrics").text
        assert two.delete("/v1/sessions/shared-1").status_code == 204
        assert one.post("/v1/recommend", json={"session_id": "shared-1"}).status_code == 404


def test_redis_session_ttl_through_the_app(redis_prefix):
    with client(model_a(), redis_url=REDIS_URL, redis_prefix=redis_prefix, session_ttl_s=0.5) as api:
        api.post("/v1/sessions/short/events", json={"item_id": "1001"})
        assert api.post("/v1/recommend", json={"session_id": "short"}).status_code == 200
        time.sleep(0.8)
        assert api.post("/v1/recommend", json={"session_id": "short"}).status_code == 404


def test_unreachable_redis_fails_start_up_loudly():
    from service.redis_store import check_reachable
    from service.settings import Settings

    with pytest.raises(SessionStoreError, match="cannot reach Redis"):
        check_reachable("redis://127.0.0.1:1/0")
    store = make_store(Settings(redis_url="redis://127.0.0.1:1/0"))
    with pytest.raises(SessionStoreError, match="cannot reach Redis"):
        asyncio.run(store.check())


def test_redis_outage_is_503_for_stateful_requests_only(redis_prefix):
    with client(model_a(), redis_url=REDIS_URL, redis_prefix=redis_prefix) as api:
        store = api.app.state.store
        store._redis = RedisChannel("redis://127.0.0.1:1/0")  # as if Redis had gone away
        r = api.post("/v1/sessions/o-1/events", json={"item_id": "1001"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "Redis" in r.json()["detail"]
        assert api.post("/v1/recommend", json={"items": ["1001"]}).status_code == 200
        assert api.get("/readyz").status_code == 503


# -- model version change ----------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_sessions_are_rebuilt_after_a_model_change(tmp_path, backend):
    overrides = {"api_key": "secret"}
    if backend == "redis":
        redis_client()
        overrides.update(redis_url=REDIS_URL, redis_prefix=f"gru4rec-test-{uuid.uuid4().hex[:8]}:")
    served = copy_model(model_a(), tmp_path / "served")
    clicks = ["1031", "1002", "1032", "1033"]  # 1002 is only in model A
    with client(served, **overrides) as api:
        for item in clicks:
            api.post("/v1/sessions/m-1/events", json={"item_id": item})
        old_version = api.get("/v1/model").json()["model_version"]
        swap_model(model_b(), served)
        reload = api.post("/v1/admin/reload", headers={"X-API-Key": "secret"})
        assert reload.status_code == 200 and reload.json()["changed"] is True
        new_version = reload.json()["model_version"]
        assert new_version != old_version

        after = api.post("/v1/recommend", json={"session_id": "m-1", "k": 10})
        stateless = api.post("/v1/recommend", json={"items": clicks, "k": 10})
        assert after.json()["model_version"] == new_version
        assert top_ids(after) == top_ids(stateless)
        np.testing.assert_allclose(top_scores(after), top_scores(stateless), rtol=1e-5, atol=1e-6)
        assert "gru4rec_session_rebuilds_total 1.0" in api.get("/metrics").text
        # the rebuilt session goes on with the next click as usual
        nxt = api.post("/v1/sessions/m-1/events", json={"item_id": "1090", "k": 10})
        assert top_ids(nxt) == top_ids(api.post("/v1/recommend", json={"items": clicks + ["1090"], "k": 10}))
        if backend == "redis":
            keys = list(redis_client().scan_iter(match=overrides["redis_prefix"] + "*"))
            redis_client().delete(*keys)


def test_long_sessions_keep_only_recent_clicks_but_exact_state():
    history = [str(1000 + (7 * j) % 60) for j in range(9)]
    with client(model_a(), max_session_clicks=3) as api:
        for n in range(1, len(history) + 1):  # the full history each time: only the new tail is processed
            stateful = api.post("/v1/recommend", json={"session_id": "long", "items": history[:n], "k": 10})
            stateless = api.post("/v1/recommend", json={"items": history[:n], "k": 10})
            assert top_ids(stateful) == top_ids(stateless)
        # exclude_seen covers the remembered clicks
        r = api.post("/v1/sessions/long/events", json={"item_id": "1001", "k": 57, "exclude_seen": True})
        assert not {"1001", history[-1], history[-2]} & set(top_ids(r))
        stored = api.app.state.store.get("long")
        assert stored.clicks == (history[-2], history[-1], "1001")
        assert stored.n_clicks == len(history) + 1


def test_app_evicts_least_recent_sessions():
    with client(model_a(), max_sessions=2) as api:
        for sid in ("s1", "s2", "s3"):
            assert api.post(f"/v1/sessions/{sid}/events", json={"item_id": "1001"}).status_code == 200
        assert api.post("/v1/recommend", json={"session_id": "s1"}).status_code == 404
        assert api.post("/v1/recommend", json={"session_id": "s3"}).status_code == 200
        text = api.get("/metrics").text
        assert 'gru4rec_session_evictions_total{reason="lru"} 1.0' in text
        assert "gru4rec_sessions 2.0" in text


def test_a_click_on_a_session_this_process_wrote_last_is_one_redis_round_trip(redis_prefix, monkeypatch):
    """The usual click (the session's previous click came to this process) costs one command to Redis:
    the compare-and-set script, with no read before it."""
    commands = []
    call = RedisChannel.call

    async def counting(self, *command):
        commands.append(command[0])
        return await call(self, *command)

    monkeypatch.setattr(RedisChannel, "call", counting)
    with client(model_a(), redis_url=REDIS_URL, redis_prefix=redis_prefix) as api:
        assert api.post("/v1/sessions/rt-1/events", json={"item_id": "1010"}).status_code == 200
        commands.clear()
        for item in ("1011", "1012", "1013", "1014"):
            assert api.post("/v1/sessions/rt-1/events", json={"item_id": item, "k": 5}).status_code == 200
        assert commands == ["EVALSHA"] * 4, commands
