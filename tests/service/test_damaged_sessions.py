"""Damaged session entries in Redis (issue 12, defect 6): a state of the wrong size, item indices out
of range, a key of another type or unreadable bytes must not break their session. Each is treated as
a new session, logged, and overwritten (with a TTL again), and the request answers 200."""

from __future__ import annotations

import logging
import uuid

import numpy as np
import pytest
from service_helpers import REDIS_URL, client, model_a, redis_client, top_ids


@pytest.fixture
def redis_prefix():
    r = redis_client()
    prefix = f"gru4rec-test-{uuid.uuid4().hex[:8]}:"
    yield prefix
    keys = list(r.scan_iter(match=prefix + "*"))
    if keys:
        r.delete(*keys)


def _key(r, prefix: str, session_id: str) -> bytes:
    """The one key the service keeps for the session, whatever its naming."""
    keys = [k for k in r.scan_iter(match=f"{prefix}*{session_id}") if not k.endswith(b"sessions")]
    assert len(keys) == 1, keys
    return keys[0]


def _change(r, key: bytes, hidden=None, indices=None, clicks=None) -> None:
    """Rewrite parts of a stored session in place, in the store's own encoding."""
    if r.type(key) == b"hash":  # one hash per session (fields v, h, c, i, n, k)
        fields = {}
        if hidden is not None:
            fields["h"] = np.asarray(hidden, np.float32).tobytes()
        if indices is not None:
            fields["i"] = np.asarray(indices, np.int32).tobytes()
        if clicks is not None:
            import json

            fields["c"] = json.dumps(list(clicks))
        r.hset(key, mapping=fields)
        return
    from service.redis_store import decode, encode

    state = decode(r.get(key))
    if hidden is not None:
        state.hidden = np.asarray(hidden, np.float32)
    if indices is not None:
        state.indices = tuple(indices)
    if clicks is not None:
        state.clicks = tuple(clicks)
    r.set(key, encode(state))


DAMAGE = {
    "state of the wrong size": lambda r, key: _change(r, key, hidden=[0.5] * 5),
    "item index out of range": lambda r, key: _change(r, key, indices=[99_999], clicks=["1001"]),
    "negative item index": lambda r, key: _change(r, key, indices=[-7], clicks=["1001"]),
    "NaN in the state": lambda r, key: _change(r, key, hidden=[float("nan")] * 16),
    "key of another type": lambda r, key: (r.delete(key), r.rpush(key, "not", "a", "session")),
    "unreadable bytes": lambda r, key: (r.delete(key), r.set(key, b"\x00garbage\xff")),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_entry_is_a_new_session_and_is_overwritten(redis_prefix, damage, caplog):
    r = redis_client()
    with client(model_a(), redis_url=REDIS_URL, redis_prefix=redis_prefix) as api:
        assert api.post("/v1/sessions/d-1/events", json={"item_id": "1010"}).status_code == 200
        key = _key(r, redis_prefix, "d-1")
        DAMAGE[damage](r, key)
        r.persist(key)  # a damaged key left without TTL must not live forever either

        with caplog.at_level(logging.WARNING, logger="service"):
            answer = api.post("/v1/sessions/d-1/events", json={"item_id": "1020", "k": 10, "exclude_seen": True})
        assert answer.status_code == 200, answer.text
        fresh = api.post("/v1/recommend", json={"items": ["1020"], "k": 10, "exclude_seen": True})
        assert top_ids(answer) == top_ids(fresh)  # a new session that starts with this click
        assert sum("d-1" in m and "afresh" in m for m in caplog.messages) == 1

        assert r.type(key) != b"list" and r.pttl(key) > 0  # overwritten, with the session TTL again
        again = api.post("/v1/sessions/d-1/events", json={"item_id": "1021", "k": 10})
        assert top_ids(again) == top_ids(api.post("/v1/recommend", json={"items": ["1020", "1021"], "k": 10}))
        assert "gru4rec_session_damaged_total 1.0" in api.get("/metrics").text


@pytest.mark.parametrize("damage", ["state of the wrong size", "key of another type"])
def test_asking_a_damaged_session_again_is_404_not_500(redis_prefix, damage):
    r = redis_client()
    with client(model_a(), redis_url=REDIS_URL, redis_prefix=redis_prefix) as api:
        api.post("/v1/sessions/d-2/events", json={"item_id": "1010"})
        DAMAGE[damage](r, _key(r, redis_prefix, "d-2"))
        r_again = api.post("/v1/recommend", json={"session_id": "d-2", "k": 5})
        assert r_again.status_code == 404, r_again.text
        with_items = api.post("/v1/recommend", json={"session_id": "d-2", "items": ["1010", "1011"], "k": 5})
        assert with_items.status_code == 200
        assert top_ids(with_items) == top_ids(api.post("/v1/recommend", json={"items": ["1010", "1011"], "k": 5}))
