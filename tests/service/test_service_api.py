"""The HTTP API through the real app and a real (tiny) trained model: happy paths and error paths."""

from __future__ import annotations

import json

import numpy as np
import pytest
from service_helpers import client, model_a, top_ids, top_scores


@pytest.fixture(scope="module")
def api():
    with client(model_a(), max_items_per_request=50, max_k=40) as c:
        yield c


@pytest.fixture(scope="module")
def catalogue() -> dict:
    meta = json.loads((model_a() / "metadata.json").read_text())
    return {"ids": meta["item_ids"], "counts": meta["item_counts"], "version": meta["model_version"]}


def recommend(api, **body):
    r = api.post("/v1/recommend", json=body)
    assert r.status_code == 200, r.text
    return r


# -- happy paths -------------------------------------------------------------------------------------
def test_health_ready_and_model(api, catalogue):
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["model_version"] == catalogue["version"]
    info = api.get("/v1/model").json()
    assert info["model_version"] == catalogue["version"]
    assert info["n_items"] == 60
    assert info["hyperparameters"]["layers"] == [16]
    assert info["training"]["events"] > 0
    assert "item_ids" not in info and "item_ids" not in json.dumps(info)


def test_stateless_recommend(api, catalogue):
    r = recommend(api, items=["1001", "1002", "1003"], k=7)
    body = r.json()
    assert body["model_version"] == catalogue["version"]
    assert body["unknown_items"] == [] and body["source"] == "model"
    assert len(body["items"]) == 7
    assert all(isinstance(x["item_id"], str) and x["item_id"] in catalogue["ids"] for x in body["items"])
    scores = top_scores(r)
    assert all(isinstance(s, float) for s in scores)
    assert scores == sorted(scores, reverse=True)
    assert recommend(api, items=["1001", "1002", "1003"]).json()["items"].__len__() == 20  # default k


def test_integer_ids_are_their_string_form(api):
    as_ints = recommend(api, items=[1001, 1002], k=5, exclude=[1003])
    as_strs = recommend(api, items=["1001", "1002"], k=5, exclude=["1003"])
    assert as_ints.json() == as_strs.json()


def test_unknown_items_are_skipped_and_reported(api):
    mixed = recommend(api, items=["nope", "1001", 424242, "1002"], k=5).json()
    known = recommend(api, items=["1001", "1002"], k=5).json()
    assert mixed["unknown_items"] == ["nope", "424242"]
    assert mixed["items"] == known["items"]


def test_session_without_known_items_gets_popular_items(api, catalogue):
    order = np.lexsort((np.arange(60), -np.asarray(catalogue["counts"])))
    expected = [catalogue["ids"][i] for i in order[:5]]
    for body in ({"items": ["x", "y"], "k": 5}, {"items": [], "k": 5}):
        r = recommend(api, **body).json()
        assert r["source"] == "popularity"
        assert [x["item_id"] for x in r["items"]] == expected
        assert r["unknown_items"] == body["items"]
    shares = [x["score"] for x in r["items"]]
    assert shares[0] == pytest.approx(max(catalogue["counts"]) / sum(catalogue["counts"]))
    # filters apply to the fallback too
    r = recommend(api, items=["x"], k=5, exclude=expected[:2]).json()
    assert [x["item_id"] for x in r["items"]] == [catalogue["ids"][i] for i in order[2:7]]
    r = recommend(api, items=["x"], k=5, include=[expected[3], expected[1], "nope"]).json()
    assert [x["item_id"] for x in r["items"]] == [expected[1], expected[3]]


def test_stateful_events_equal_stateless(api):
    clicks = ["1005", "1006", "unknown-1", "1008", "1008", "1009"]
    for n, item in enumerate(clicks, start=1):
        r = api.post("/v1/sessions/eq-1/events", json={"item_id": item, "k": 10})
        assert r.status_code == 200, r.text
        stateless = recommend(api, items=clicks[:n], k=10)
        assert top_ids(r) == top_ids(stateless)
        np.testing.assert_allclose(top_scores(r), top_scores(stateless), rtol=1e-5, atol=1e-6)
        assert r.json()["unknown_items"] == (["unknown-1"] if item == "unknown-1" else [])
    again = recommend(api, session_id="eq-1", k=10)
    assert top_ids(again) == top_ids(r)


def test_recommend_with_session_id_processes_only_new_clicks(api):
    history = ["1010", "1011", "1012", "1013"]
    for n in range(1, len(history) + 1):
        stateful = recommend(api, session_id="eq-2", items=history[:n], k=8)
        stateless = recommend(api, items=history[:n], k=8)
        assert top_ids(stateful) == top_ids(stateless)
        np.testing.assert_allclose(top_scores(stateful), top_scores(stateless), rtol=1e-5, atol=1e-6)
    # a history that does not continue the stored one replaces it
    other = ["1040", "1041"]
    assert top_ids(recommend(api, session_id="eq-2", items=other, k=8)) == top_ids(recommend(api, items=other, k=8))
    # the events endpoint continues a session made by /v1/recommend
    r = api.post("/v1/sessions/eq-2/events", json={"item_id": "1042", "k": 8})
    assert top_ids(r) == top_ids(recommend(api, items=other + ["1042"], k=8))


def test_unknown_session_without_items_is_404(api):
    r = api.post("/v1/recommend", json={"session_id": "never-seen", "k": 5})
    assert r.status_code == 404
    assert "items" in r.json()["detail"]


def test_exclude_include_and_exclude_seen(api):
    base = top_ids(recommend(api, items=["1020", "1021"], k=10))
    excluded = top_ids(recommend(api, items=["1020", "1021"], k=10, exclude=base[:3] + ["not-an-item"]))
    assert excluded[:7] == base[3:] and not set(base[:3]) & set(excluded)

    allow = ["1030", "1020", "1050", "nope"]
    included = recommend(api, items=["1020", "1021"], k=10, include=allow).json()["items"]
    assert {x["item_id"] for x in included} == {"1030", "1020", "1050"}
    assert [x["score"] for x in included] == sorted((x["score"] for x in included), reverse=True)
    assert top_ids(recommend(api, items=["1020"], k=10, include=allow, exclude=["1030"])) == [
        i for i in top_ids(recommend(api, items=["1020"], k=10, include=allow)) if i != "1030"
    ]
    assert recommend(api, items=["1020"], k=5, include=["nope"]).json()["items"] == []
    assert recommend(api, items=["1020"], k=5, include=[]).json()["items"] == []

    seen = ["1020", "1021", "1022"]
    stateless = top_ids(recommend(api, items=seen, k=40, exclude_seen=True))
    assert not set(seen) & set(stateless)
    for item in seen:
        api.post("/v1/sessions/seen-1/events", json={"item_id": item})
    r = api.post("/v1/sessions/seen-1/events", json={"item_id": "1023", "k": 40, "exclude_seen": True})
    assert not set(seen + ["1023"]) & set(top_ids(r))
    assert len(top_ids(r)) == 40


def test_fewer_than_k_when_filters_leave_fewer(api, catalogue):
    block = catalogue["ids"][:57]
    r = recommend(api, items=["1001"], k=10, exclude=block)
    assert sorted(top_ids(r)) == sorted(catalogue["ids"][57:])
    assert all(np.isfinite(top_scores(r)))


def test_k_bounds(api):
    assert len(recommend(api, items=["1001"], k=1).json()["items"]) == 1
    for k, needle in ((0, "greater than or equal"), (41, "limit of 40"), (-3, "greater than"), ("many", "integer")):
        r = api.post("/v1/recommend", json={"items": ["1001"], "k": k})
        assert r.status_code == 422, (k, r.text)
        assert needle in json.dumps(r.json())
    with client(model_a(), max_k=1000) as big:
        r = big.post("/v1/recommend", json={"items": ["1001"], "k": 61})
        assert r.status_code == 422 and "60 items" in r.text
        assert len(big.post("/v1/recommend", json={"items": ["1001"], "k": 60}).json()["items"]) == 60


# -- error paths -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body, field",
    [
        ({"k": 5}, "items"),  # neither items nor session_id
        ({"items": "1001"}, "items"),
        ({"items": [1.5]}, "items"),
        ({"items": [True]}, "items"),
        ({"items": [None]}, "items"),
        ({"items": [""]}, "items"),
        ({"items": ["x" * 257]}, "items"),
        ({"items": [10**300]}, "items"),
        ({"items": ["1001"] * 51}, "items"),  # over max_items_per_request
        ({"items": ["1001"], "exclude_seen": "yes"}, "exclude_seen"),
        ({"items": ["1001"], "exclude": "1002"}, "exclude"),
        ({"items": ["1001"], "include": [{}]}, "include"),
        ({"items": ["1001"], "session_id": "has space"}, "session_id"),
        ({"items": ["1001"], "session_id": "x" * 129}, "session_id"),
        ({"items": ["1001"], "session_id": ""}, "session_id"),
        ({"items": ["1001"], "itemz": ["1"]}, "itemz"),
    ],
)
def test_invalid_recommend_requests_are_422(api, body, field):
    r = api.post("/v1/recommend", json=body)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert any(field in map(str, d["loc"]) for d in detail), detail
    assert all(d["msg"] for d in detail)


@pytest.mark.parametrize(
    "content, content_type",
    [
        (b"{", "application/json"),
        (b"[]", "application/json"),
        (b'"items"', "application/json"),
        (b"null", "application/json"),
        (b'{"items": ["\\ud800"]}', "application/json"),  # lone surrogate
        (b"\xff\xfe", "application/json"),
        (b"items=1", "application/x-www-form-urlencoded"),
        (b'{"items": [' + b"9" * 5000 + b"]}", "application/json"),  # int too long for Python's parser
    ],
)
def test_malformed_bodies_are_4xx(api, content, content_type):
    r = api.post("/v1/recommend", content=content, headers={"content-type": content_type})
    assert 400 <= r.status_code < 500, r.text
    assert "detail" in r.json()


def test_event_errors(api):
    for body in ({}, {"item_id": None}, {"item_id": ["1001"]}, {"item_id": "1001", "k": 0}, {"item_id": "1", "extra": 1}):
        r = api.post("/v1/sessions/e-1/events", json=body)
        assert r.status_code == 422, (body, r.text)
    assert api.post("/v1/sessions/bad%20id/events", json={"item_id": "1001"}).status_code == 422
    assert api.post("/v1/sessions/" + "x" * 129 + "/events", json={"item_id": "1001"}).status_code == 422
    assert api.get("/v1/sessions/e-1/events").status_code == 405
    assert api.post("/v1/nothing-here", json={}).status_code == 404


def test_body_size_limit(api):
    big = {"items": ["1001"], "exclude": ["x" * 200] * 6000}  # about 1.2 MB
    r = api.post("/v1/recommend", json=big)
    assert r.status_code == 413 and "larger than" in r.json()["detail"]

    def chunks():  # no Content-Length: the streamed size is counted
        yield b'{"items": ["1001"], "exclude": ['
        for _ in range(1200):
            yield b'"' + b"y" * 1000 + b'",'
        yield b'"z"]}'

    r = api.post("/v1/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    r = api.post("/v1/recommend", content=b"{}", headers={"content-type": "application/json", "content-length": "abc"})
    assert r.status_code == 400


def test_delete_session(api):
    api.post("/v1/sessions/del-1/events", json={"item_id": "1001"})
    assert api.delete("/v1/sessions/del-1").status_code == 204
    assert api.delete("/v1/sessions/del-1").status_code == 404
    assert api.post("/v1/recommend", json={"session_id": "del-1"}).status_code == 404
    assert api.delete("/v1/sessions/bad%20id").status_code == 422


def test_metrics(api):
    api.post("/v1/recommend", json={"items": ["1001", "nope"]})
    api.post("/v1/sessions/m-1/events", json={"item_id": "1001"})
    api.post("/v1/recommend", json={"k": 0, "items": []})
    text = api.get("/metrics").text
    assert 'gru4rec_http_requests_total{endpoint="/v1/recommend",method="POST",status="200"}' in text
    assert 'gru4rec_http_requests_total{endpoint="/v1/recommend",method="POST",status="422"}' in text
    assert 'gru4rec_http_request_duration_seconds_bucket{endpoint="/v1/sessions/{session_id}/events"' in text
    for name in ("gru4rec_unknown_items_total", "gru4rec_clicked_items_total", "gru4rec_popularity_fallback_total"):
        assert f"\n{name} " in text
    sessions = [line for line in text.splitlines() if line.startswith("gru4rec_sessions ")]
    assert float(sessions[0].split()[1]) >= 1
    assert "gru4rec_model_info{version=" in text


def test_openapi_documents_the_api(api):
    schema = api.get("/openapi.json").json()
    paths = schema["paths"]
    for path in ("/v1/recommend", "/v1/sessions/{session_id}/events", "/v1/sessions/{session_id}", "/v1/model",
                 "/v1/admin/reload", "/healthz", "/readyz", "/metrics"):
        assert path in paths
    assert paths["/v1/recommend"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    components = schema["components"]["schemas"]
    assert components["RecommendRequest"]["examples"] and components["RecommendResponse"]["examples"]
    assert components["EventRequest"]["examples"]


def test_a_stateless_request_without_items_names_the_missing_field(api):
    answer = api.post("/v1/recommend", json={"k": 5})
    assert answer.status_code == 422
    assert answer.json()["detail"] == [{
        "loc": ["body", "items"], "type": "missing",
        "msg": "give the session's clicks in `items`, or a `session_id` of a known session",
    }]
