"""Approximate top-k: the index's candidates re-scored exactly, filters that keep their exact meaning,
`exact: true`, which retrieval GET /v1/model reports, the index cache (beside the model, or in the
cache directory when the model directory cannot be written), and reloads that swap the model and its
index together."""

from __future__ import annotations

import errno
import json
import threading

import numpy as np
import pytest
import torch
from service_helpers import client, copy_model, model_a, model_big, swap_model, synthetic_model, top_ids, top_scores

from service import index_cache
from service.engine import Query, RetrievalSettings, load_bundle

INDEX = RetrievalSettings(mode="index", nprobe=4, candidates=50)  # few cells and candidates: really approximate


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return load_bundle(copy_model(model_big(), tmp_path_factory.mktemp("big") / "m"), INDEX, warmup_steps=1)


def exact_scores(bundle, h: np.ndarray) -> np.ndarray:
    return (bundle.weights.numpy() @ h + bundle.bias.numpy()).astype(np.float64)


def sessions(bundle, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    steps = [rng.integers(0, bundle.n_items, size=3).tolist() for _ in range(n)]
    return np.ascontiguousarray(bundle.session_vectors(bundle.advance(np.zeros((n, bundle.state_size), np.float32), steps)))


def test_index_answers_are_exactly_scored_and_mostly_the_exact_top_k(bundle):
    h = sessions(bundle, 50)
    approx = bundle.rank(h, [Query(20)] * 50)
    exact = bundle.rank(h, [Query(20, exact=True)] * 50)
    overlap = []
    for row, a, e in zip(h, approx, exact, strict=True):
        truth = exact_scores(bundle, row)
        assert e.indices == np.argsort(-truth, kind="stable")[:20].tolist()  # exact is exact
        np.testing.assert_allclose(a.scores, truth[a.indices], rtol=1e-4, atol=1e-4)  # re-scored exactly
        assert a.scores == sorted(a.scores, reverse=True) and len(a.indices) == 20
        overlap.append(len(set(a.indices) & set(e.indices)) / 20)
    assert 0.5 < np.mean(overlap) < 1.0  # approximate (this index searches under 1% of the items), yet close


def test_block_lists_and_seen_items_never_appear(bundle):
    h = sessions(bundle, 20, seed=1)
    for row in h:
        top100 = np.argsort(-exact_scores(bundle, row))[:100]
        blocked = np.concatenate([top100[::2], np.arange(0, bundle.n_items, 97)]).astype(np.int64)
        got = bundle.rank(row[None, :], [Query(20, exclude=blocked)])[0]
        assert len(got.indices) == 20 and not set(got.indices) & set(blocked.tolist())
        np.testing.assert_allclose(got.scores, exact_scores(bundle, row)[got.indices], rtol=1e-4, atol=1e-4)


def test_allow_lists_are_ranked_exactly(bundle):
    h = sessions(bundle, 10, seed=2)
    allowed = np.arange(5, bundle.n_items, 331).astype(np.int64)
    for row in h:
        got = bundle.rank(row[None, :], [Query(8, include=allowed)])[0]
        truth = exact_scores(bundle, row)[allowed]
        assert got.indices == allowed[np.argsort(-truth, kind="stable")[:8]].tolist()


def test_filters_that_leave_too_few_candidates_fall_back_to_exact(bundle, monkeypatch):
    h = sessions(bundle, 4, seed=3)
    excluded = np.arange(0, bundle.n_items, 3).astype(np.int64)
    queries = [Query(15, exclude=excluded)] * 4
    expected = bundle.rank(h, [Query(15, exclude=excluded, exact=True)] * 4)
    few = lambda q, counts: np.where(np.arange(max(counts)) < 10, np.arange(max(counts)), -1)[None, :].repeat(len(q), 0)  # noqa: E731
    monkeypatch.setattr(bundle.index, "search", few)  # an index that finds only ten candidates
    for got, want in zip(bundle.rank(h, queries), expected, strict=True):
        assert got.indices == want.indices


def test_the_api_keeps_filter_meanings_with_the_index():
    with client(model_big(), retrieval="index", index_nprobe=4, index_candidates=50) as api:
        clicks = ["i1", "i2", "i3"]
        exact = api.post("/v1/recommend", json={"items": clicks, "k": 20, "exact": True})
        blocked = top_ids(exact)[:10]
        r = api.post("/v1/recommend", json={"items": clicks, "k": 20, "exclude": blocked})
        assert len(top_ids(r)) == 20 and not set(blocked) & set(top_ids(r))
        allow = top_ids(exact)[5:15] + ["i17", "nope"]
        r = api.post("/v1/recommend", json={"items": clicks, "k": 5, "include": allow})
        assert top_ids(r) == [i for i in top_ids(api.post("/v1/recommend", json={"items": clicks, "k": 20, "include": allow,
                                                                                   "exact": True}))][:5]
        for item in clicks:
            r = api.post("/v1/sessions/ix-1/events", json={"item_id": item, "k": 40, "exclude_seen": True})
        assert not set(clicks) & set(top_ids(r))
        stateful = api.post("/v1/sessions/ix-2/events", json={"item_id": "i1", "k": 20, "exact": True})
        assert top_ids(stateful) == top_ids(api.post("/v1/recommend", json={"items": ["i1"], "k": 20, "exact": True}))


def test_model_info_says_which_retrieval_is_used():
    with client(model_a()) as api:
        retrieval = api.get("/v1/model").json()["retrieval"]
        assert retrieval["mode"] == "exact" and "200000" in retrieval["reason"] and retrieval["index"] is None
    with client(model_big(), index_min_items=10_000, index_nprobe=7, index_candidates=60) as api:
        retrieval = api.get("/v1/model").json()["retrieval"]
        assert retrieval["mode"] == "index"
        assert retrieval["index"]["nprobe"] == 7 and retrieval["index"]["candidates"] == 60 and retrieval["index"]["lists"] > 100
    with client(model_big(), retrieval="exact") as api:
        assert api.get("/v1/model").json()["retrieval"]["mode"] == "exact"


# -- the cache ---------------------------------------------------------------------------------------------
def _cached(directory) -> list[str]:
    return sorted(p.name for p in directory.glob("serving-index-*.faiss"))


def test_an_index_is_cached_beside_the_model_and_reused(tmp_path):
    model = copy_model(model_big(), tmp_path / "m")
    settings = RetrievalSettings(mode="index", nprobe=4, candidates=50, cache_dir=tmp_path / "cache")
    first = load_bundle(model, settings, warmup_steps=0)
    assert first.index.build_s is not None and len(_cached(model)) == 1
    second = load_bundle(model, settings, warmup_steps=0)
    assert second.index.build_s is None and "model directory" in second.index.source
    h = sessions(first, 5)
    assert [t.indices for t in first.rank(h, [Query(20)] * 5)] == [t.indices for t in second.rank(h, [Query(20)] * 5)]
    assert not (tmp_path / "cache").exists() or not _cached(tmp_path / "cache")


def test_a_read_only_model_directory_caches_in_the_cache_directory(tmp_path, monkeypatch):
    model = copy_model(model_big(), tmp_path / "m")
    write = index_cache._write

    def read_only_model_dir(dir_fd, name, data):
        import os

        if "metadata.json" in os.listdir(dir_fd):
            raise OSError(errno.EROFS, "Read-only file system")
        write(dir_fd, name, data)

    monkeypatch.setattr(index_cache, "_write", read_only_model_dir)
    settings = RetrievalSettings(mode="index", nprobe=4, candidates=50, cache_dir=tmp_path / "cache")
    first = load_bundle(model, settings, warmup_steps=0)
    assert _cached(model) == [] and len(_cached(tmp_path / "cache")) == 1
    assert str(tmp_path / "cache") in first.index.source
    second = load_bundle(model, settings, warmup_steps=0)
    assert second.index.build_s is None and str(tmp_path / "cache") in second.index.source


def test_a_damaged_cached_index_is_rebuilt(tmp_path, caplog):
    model = copy_model(model_big(), tmp_path / "m")
    settings = RetrievalSettings(mode="index", nprobe=4, candidates=50, cache_dir=tmp_path / "cache")
    load_bundle(model, settings, warmup_steps=0)
    (cached,) = model.glob("serving-index-*.faiss")
    cached.write_bytes(cached.read_bytes()[:1000])
    again = load_bundle(model, settings, warmup_steps=0)
    assert again.index.build_s is not None and "ignoring the cached index" in caplog.text
    assert cached.stat().st_size > 10_000  # replaced by a complete one


def test_processes_starting_together_build_the_index_once(tmp_path):
    model = copy_model(model_big(), tmp_path / "m")
    settings = RetrievalSettings(mode="index", nprobe=4, candidates=50, cache_dir=tmp_path / "cache")
    bundles = []
    threads = [threading.Thread(target=lambda: bundles.append(load_bundle(model, settings, warmup_steps=0))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(b.index.build_s is None for b in bundles) == [False, True, True]  # one built, two loaded it


def test_weights_of_another_model_never_use_its_index(tmp_path):
    model = copy_model(model_big(), tmp_path / "m")
    settings = RetrievalSettings(mode="index", nprobe=4, candidates=50, cache_dir=tmp_path / "cache")
    load_bundle(model, settings, warmup_steps=0)
    state = torch.load(model / "model.pt", weights_only=True)
    state["Wy.weight"][0, 0] += 1.0  # same version, same shapes, other weights
    torch.save(state, model / "model.pt")
    assert load_bundle(model, settings, warmup_steps=0).index.build_s is not None


# -- reload --------------------------------------------------------------------------------------------------
def test_a_reload_swaps_the_model_and_its_index_together(tmp_path):
    other = synthetic_model(tmp_path / "other", 20_000, seed=11)  # same ids, other vectors
    meta = json.loads((other / "metadata.json").read_text())
    served = copy_model(model_big(), tmp_path / "served")
    options = {"retrieval": "index", "api_key": "k"}  # default cells searched and candidates
    with client(served, **options) as api:
        before = api.get("/v1/model").json()
        swap_model(other, served)
        assert api.post("/v1/admin/reload", headers={"X-API-Key": "k"}).json()["changed"] is True
        after = api.get("/v1/model").json()
        assert after["model_version"] == meta["model_version"] != before["model_version"]
        assert after["retrieval"]["index"]["source"] != before["retrieval"]["index"]["source"]
        overlaps = []
        for j in range(20):
            clicks = [f"i{j}", f"i{j + 100}"]
            served_top = api.post("/v1/recommend", json={"items": clicks, "k": 20})
            exact_top = api.post("/v1/recommend", json={"items": clicks, "k": 20, "exact": True})
            assert served_top.json()["model_version"] == meta["model_version"]
            overlaps.append(len(set(top_ids(served_top)) & set(top_ids(exact_top))) / 20)
            scores = dict(zip(top_ids(exact_top), top_scores(exact_top), strict=True))
            for item, score in zip(top_ids(served_top), top_scores(served_top), strict=True):
                if item in scores:
                    assert score == pytest.approx(scores[item], rel=1e-4, abs=1e-4)
        assert np.mean(overlaps) > 0.9  # the new model's own index: the old one would find other items


def test_a_model_directory_with_a_cached_index_is_still_a_model_directory(tmp_path):
    """The cached index (and a killed write's temporary) belong to the model directory: `train --out`
    and `--resume` still accept it as their own, and everything that loads a model still loads it."""
    from gru4rec.foundation.atomic import check_output_dir
    from gru4rec.model.checkpoint import MODEL_OUTPUT, load_checkpoint

    model = copy_model(model_big(), tmp_path / "m")
    load_bundle(model, RetrievalSettings(mode="index", nprobe=4, candidates=50), warmup_steps=0)
    assert len(_cached(model)) == 1
    (model / f".{_cached(model)[0].removesuffix('.faiss')}.999999.tmp").write_bytes(b"half an index")
    assert check_output_dir(model, MODEL_OUTPUT) == model
    assert len(load_checkpoint(model).item_map) == load_bundle(model, warmup_steps=0).n_items
    (model / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="notes.txt"):
        check_output_dir(model, MODEL_OUTPUT)


def test_requests_are_answered_while_a_reload_builds_the_index(tmp_path, monkeypatch):
    """The new model's index is built in the background: until it is ready, the old model and its
    index keep answering; then both are swapped together."""
    from service import engine

    other = synthetic_model(tmp_path / "other", 20_000, seed=12)
    served = copy_model(model_big(), tmp_path / "served")
    building, release = threading.Event(), threading.Event()
    build = engine.build_index

    def held_build(*args, **kwargs):
        building.set()
        assert release.wait(30)
        return build(*args, **kwargs)

    with client(served, retrieval="index", api_key="k") as api:
        before = api.get("/v1/model").json()["model_version"]
        swap_model(other, served)
        monkeypatch.setattr(engine, "build_index", held_build)
        reloads = []
        reload = threading.Thread(target=lambda: reloads.append(api.post("/v1/admin/reload", headers={"X-API-Key": "k"})))
        reload.start()
        try:
            assert building.wait(30)
            for j in range(5):
                answer = api.post("/v1/recommend", json={"items": [f"i{j}"], "k": 10})
                assert answer.status_code == 200 and answer.json()["model_version"] == before
        finally:
            release.set()
            reload.join(60)
        assert reloads[0].status_code == 200 and reloads[0].json()["changed"] is True
        assert api.post("/v1/recommend", json={"items": ["i1"], "k": 10}).json()["model_version"] != before


@pytest.mark.parametrize("n_items", [2_873, 37_483, 200_000, 1_896_110])
def test_the_default_search_scans_many_items_per_candidate(n_items):
    """An eighth of the cells, and never fewer cells than hold 20 items per candidate (a small
    catalogue's eighth would not even hold the candidates asked for)."""
    from service.retrieval import SCAN_PER_CANDIDATE, IndexParams

    params = IndexParams.for_catalogue(n_items, None, 500)
    scanned = params.nprobe * n_items / params.n_lists
    assert scanned >= min(n_items, SCAN_PER_CANDIDATE * 500) * 0.99
    assert params.nprobe >= round(params.n_lists / 8) and params.nprobe <= params.n_lists
    assert IndexParams.for_catalogue(n_items, 3, 500).nprobe == 3  # a setting is taken as given
