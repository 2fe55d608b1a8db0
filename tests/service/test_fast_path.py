"""The fast path answers only requests that the pydantic models accept, with the same values, and
answers them exactly as the FastAPI routes would."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from service_helpers import client, model_a

from service.fastpath import NotPlain, events_session_id, parse_event, parse_recommend
from service.schemas import EventRequest, RecommendRequest

ids = st.one_of(
    st.text(min_size=0, max_size=260), st.integers(min_value=-(2**70), max_value=2**70), st.booleans(), st.none(),
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(["1001", "", "x" * 256, "x" * 257, "é", "a\n"]),
)
special = st.sampled_from([1, 20, 0, -1, 10_000, 10_001, True, False, "5", 5.0, None, "s-1", "a b", "x" * 129, "a\n", [], {}])
anything = st.one_of(ids, special, st.lists(ids, max_size=3))
fields = st.sampled_from(["items", "session_id", "item_id", "k", "exclude_seen", "exclude", "include", "exact", "extra"])
random_bodies = st.dictionaries(fields, anything, max_size=6)

valid_id = st.one_of(st.text(min_size=1, max_size=256), st.integers(min_value=-(2**63), max_value=2**63 - 1))


def mostly(valid):
    """Usually a valid value, now and then anything at all."""
    return st.tuples(st.integers(0, 5), valid, anything).map(lambda t: t[2] if t[0] == 0 else t[1])


options = {
    "k": mostly(st.integers(min_value=1, max_value=10_000)),
    "exclude_seen": mostly(st.booleans()),
    "exclude": mostly(st.lists(valid_id, max_size=3)),
    "include": mostly(st.one_of(st.none(), st.lists(valid_id, max_size=3))),
    "exact": mostly(st.booleans()),
}
events = st.one_of(st.fixed_dictionaries({"item_id": mostly(valid_id)}, optional=options), random_bodies)
recommends = st.one_of(st.fixed_dictionaries({}, optional={
    "items": mostly(st.one_of(st.none(), st.lists(valid_id, max_size=4))),
    "session_id": mostly(st.one_of(st.none(), st.from_regex(r"[\x21-\x7e]{1,128}", fullmatch=True))),
    **options,
}), random_bodies)


def _pydantic(model, raw: bytes):
    try:
        return model.model_validate_json(raw)
    except ValidationError:
        return None


def _options(f) -> tuple:
    return f.k, f.exclude_seen, list(f.exclude), f.include, f.exact


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
@given(events)
def test_event_checks_accept_only_what_pydantic_accepts_with_the_same_values(body):
    raw = json.dumps(body).encode()
    try:
        item, parsed = parse_event(raw)
    except NotPlain:
        return  # left to the FastAPI route: always allowed
    reference = _pydantic(EventRequest, raw)
    assert reference is not None, body
    assert (item, *_options(parsed)) == (reference.item_id, *_options(reference))


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
@given(recommends)
def test_recommend_checks_accept_only_what_pydantic_accepts_with_the_same_values(body):
    raw = json.dumps(body).encode()
    try:
        items, session_id, parsed = parse_recommend(raw)
    except NotPlain:
        return
    reference = _pydantic(RecommendRequest, raw)
    assert reference is not None, body
    assert (items, session_id, *_options(parsed)) == (reference.items, reference.session_id, *_options(reference))


def test_session_ids_in_paths():
    assert events_session_id("/v1/sessions/s-42/events") == "s-42"
    for path in ("/v1/sessions/a/b/events", "/v1/sessions/a b/events", "/v1/sessions//events", "/v1/sessions/a\n/events",
                 "/v1/sessions/" + "x" * 129 + "/events", "/v1/sessions/s/event", "/v1/session/s/events"):
        assert events_session_id(path) is None, path


REQUESTS = [
    ("/v1/recommend", {"items": ["1001", "1002", "nope"], "k": 5}),
    ("/v1/recommend", {"items": [1001, "1002"], "k": 5, "exclude": [1003], "include": ["1004", "1005", "1001"]}),
    ("/v1/recommend", {"items": ["x"], "k": 3}),
    ("/v1/recommend", {"k": 5}),
    ("/v1/recommend", {"items": ["1001"], "k": 61}),
    ("/v1/recommend", {"session_id": "fp-unknown"}),
    ("/v1/sessions/fp-1/events", {"item_id": "1001", "k": 4}),
    ("/v1/sessions/fp-1/events", {"item_id": 1002, "k": 4, "exclude_seen": True}),
    ("/v1/recommend", {"session_id": "fp-1", "k": 4, "exact": True}),
    ("/v1/recommend", {"session_id": "fp-1", "items": ["1001", "1002", "1003"], "k": 4}),
    ("/v1/sessions/fp-1/events", {"item_id": "unknown", "k": 2}),
]


def _answers(fast: bool) -> tuple[list, str]:
    with client(model_a()) as api:
        api.app.fast_path.enabled = fast
        answers = [(r.status_code, r.json(), r.headers["content-type"]) for r in (api.post(p, json=b) for p, b in REQUESTS)]
        return answers, api.get("/metrics").text


def test_both_ways_give_the_same_answers():
    fast, fast_metrics = _answers(True)
    full, full_metrics = _answers(False)
    assert fast == full
    for text in (fast_metrics, full_metrics):
        assert 'gru4rec_http_requests_total{endpoint="/v1/recommend",method="POST",status="422"} 2.0' in text
        assert 'gru4rec_http_requests_total{endpoint="/v1/sessions/{session_id}/events",method="POST",status="200"} 3.0' in text
