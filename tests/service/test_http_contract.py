"""The HTTP contract (issue 12, defect 9): `k` is a strict integer, the OpenAPI schema states the
limits the service applies, a session that keeps changing gives a 409 after the documented number of
attempts, and a request body that never completes gets a 408 and its connection closed."""

from __future__ import annotations

import asyncio
import re
import socket
import time
from pathlib import Path

import pytest
from service_helpers import client, model_a, running_server, settings

from service.app import create_app

DOCS = Path(__file__).resolve().parents[2] / "docs"
# the same request through the fast path (application/json) and through the FastAPI routes (a
# content type the fast path leaves to them)
CONTENT_TYPES = ["application/json", "application/json; charset=utf-8"]


@pytest.fixture(scope="module")
def api():
    with client(model_a(), max_k=40, max_items_per_request=50) as c:
        yield c


def post(api, path: str, body: str, content_type: str):
    return api.post(path, content=body.encode(), headers={"content-type": content_type})


@pytest.mark.parametrize("content_type", CONTENT_TYPES)
@pytest.mark.parametrize("k", ['"5"', "true", "false", "5.0", "null", '"five"'])
def test_k_must_be_an_integer(api, k, content_type):
    for path, body in (("/v1/recommend", f'{{"items": ["1001"], "k": {k}}}'),
                       ("/v1/sessions/k-1/events", f'{{"item_id": "1001", "k": {k}}}')):
        r = post(api, path, body, content_type)
        assert r.status_code == 422, (path, k, r.text)
        assert r.json()["detail"][0]["loc"] == ["body", "k"]


@pytest.mark.parametrize("content_type", CONTENT_TYPES)
def test_exact_must_be_a_boolean(api, content_type):
    r = post(api, "/v1/recommend", '{"items": ["1001"], "exact": 1}', content_type)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "exact"]


def test_schema_states_the_limits_the_service_applies(api):
    schema = api.get("/openapi.json").json()["components"]["schemas"]
    for name in ("RecommendRequest", "EventRequest"):
        k = schema[name]["properties"]["k"]
        assert k["type"] == "integer" and k["minimum"] == 1 and k["maximum"] == 40
    items = next(o for o in schema["RecommendRequest"]["properties"]["items"]["anyOf"] if o.get("type") == "array")
    assert items["maxItems"] == 50
    assert post(api, "/v1/recommend", '{"items": ["1001"], "k": 40}', "application/json").status_code == 200
    assert post(api, "/v1/recommend", '{"items": ["1001"], "k": 41}', "application/json").status_code == 422
    fifty = '{"items": [' + ", ".join(['"1001"'] * 50) + "]}"
    assert post(api, "/v1/recommend", fifty, "application/json").status_code == 200
    assert post(api, "/v1/recommend", fifty.replace("[", '["1001", ', 1), "application/json").status_code == 422


def test_default_schema_limits_are_the_default_settings():
    from service.settings import Settings

    defaults = Settings(model_dir=None)
    schema = create_app(defaults).openapi()["components"]["schemas"]
    assert schema["EventRequest"]["properties"]["k"]["maximum"] == defaults.max_k == 1000
    items = next(o for o in schema["RecommendRequest"]["properties"]["items"]["anyOf"] if o.get("type") == "array")
    assert items["maxItems"] == defaults.max_items_per_request == 1000


def test_a_session_that_keeps_changing_is_409_after_the_documented_attempts():
    from service.recommender import MAX_ATTEMPTS
    from service.sessions import Entry, MemorySessionStore

    documented = {int(n) for n in re.findall(r"(\d+) (?:attempts|conflicts)", (DOCS / "api.md").read_text() + (DOCS / "deployment.md").read_text())}
    assert documented == {MAX_ATTEMPTS} == {20}

    class AlwaysChanged(MemorySessionStore):
        """Another process writes first, every time."""

        writes = 0

        async def write(self, session_id, state, expected):
            AlwaysChanged.writes += 1
            return Entry(None, token=AlwaysChanged.writes)

    with client(model_a()) as api:
        api.app.state.recommender.store = AlwaysChanged(60, 100, 10**9)
        r = api.post("/v1/sessions/busy/events", json={"item_id": "1001"})
        assert r.status_code == 409 and "changed 20 times" in r.json()["detail"]
        assert AlwaysChanged.writes == MAX_ATTEMPTS


async def _half_sent_bodies(port: int, requests: list[bytes]) -> list[tuple[bytes, bool, float]]:
    """Send each request's head and part of its body, then wait: (answer, closed by the server, seconds)."""

    async def one(raw: bytes) -> tuple[bytes, bool, float]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        writer.write(raw)
        await writer.drain()
        try:
            answer, closed = await asyncio.wait_for(reader.read(), 8), True  # read() returns at EOF
        except TimeoutError:
            answer, closed = b"", False
        writer.close()
        return answer, closed, time.monotonic() - started

    return await asyncio.gather(*(one(raw) for raw in requests))


def _head(path: str, content_type: str) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: 100\r\n\r\n"
            '{"items": ["10').encode()


def test_a_half_sent_body_gets_408_and_the_connection_is_closed():
    app = create_app(settings(model_a(), body_timeout_s=0.5))
    requests = [_head("/v1/recommend", "application/json"), _head("/v1/sessions/h-1/events", "application/json"),
                _head("/v1/recommend", "application/json; charset=utf-8"), _head("/v1/sessions/h-2/events", "text/plain")]
    with running_server(app) as url:
        port = int(url.rsplit(":", 1)[1])
        results = asyncio.run(_half_sent_bodies(port, requests * 25))  # 100 stalled clients at once
        assert all(answer.startswith(b"HTTP/1.1 408") for answer, _, _ in results), {a[:12] for a, _, _ in results}
        assert all(closed for _, closed, _ in results)
        assert max(seconds for _, _, seconds in results) < 5
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:  # the server still serves
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(1024).startswith(b"HTTP/1.1 200")
