"""Batching: the requests of a moment share one GRU step and one score product, and get the same
answers as one by one (same items in the same order; scores equal up to float rounding, since a
matrix product of many rows may round differently from one of a single row)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from service_helpers import client, model_a, model_big, top_ids, top_scores

from gru4rec.training import native
from service.batcher import Batcher
from service.engine import Query, RetrievalSettings, load_bundle
from service.metrics import Metrics

CASES = [("model_a", "exact"), ("model_big", "exact"), ("model_big", "index")]


@pytest.fixture(scope="module", params=CASES, ids=["60 items exact", "20k items exact", "20k items index"])
def bundle(request):
    name, mode = request.param
    path = model_a() if name == "model_a" else model_big()
    return load_bundle(path, RetrievalSettings(mode=mode, nprobe=4, candidates=50), warmup_steps=1)


def _random_work(bundle, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    steps = [rng.integers(0, bundle.n_items, size=int(rng.integers(0, 7))).tolist() for _ in range(n)]
    queries = []
    for j in range(n):
        kind = j % 4
        exclude = rng.integers(0, bundle.n_items, size=int(rng.integers(0, 30))).astype(np.int64)
        include = np.unique(rng.integers(0, bundle.n_items, size=25)).astype(np.int64) if kind == 1 else None
        queries.append(Query(int(rng.integers(1, 30)), exclude, include, exact=kind == 2))
    return steps, queries


def _same(batched, single) -> None:
    assert batched.indices == single.indices
    np.testing.assert_allclose(batched.scores, single.scores, rtol=1e-5, atol=1e-5)


def test_a_batch_advances_and_ranks_as_one_by_one(bundle):
    steps, queries = _random_work(bundle, 24)
    zeros = np.zeros((24, bundle.state_size), dtype=np.float32)
    states = bundle.advance(zeros, steps)  # rows with 0..6 steps side by side
    alone = np.stack([bundle.advance(zeros[:1].copy(), [s])[0] for s in steps])
    if bundle.gru_steps is not None:  # the kernels step each session on its own: the same bits
        assert np.array_equal(states, alone)
    np.testing.assert_allclose(states, alone, rtol=1e-5, atol=1e-6)
    h = bundle.session_vectors(states)
    for batched, q, row in zip(bundle.rank(h, queries), queries, h, strict=True):
        _same(batched, bundle.rank(row[None, :], [q])[0])


def test_exact_scores_are_the_same_bit_for_bit_alone_or_batched():
    """The compiled kernel scores each session in the same order whatever comes with it."""
    assert native.library() is not None, "the native kernels must build here (a C compiler is part of the set-up)"
    bundle = load_bundle(model_big(), RetrievalSettings(mode="exact"), warmup_steps=1)
    assert bundle.score_table is not None
    steps, _ = _random_work(bundle, 11, seed=2)
    h = bundle.session_vectors(bundle.advance(np.zeros((11, bundle.state_size), dtype=np.float32), steps))
    queries = [Query(20, exact=True) for _ in steps]
    for batched, row in zip(bundle.rank(h, queries), h, strict=True):
        single = bundle.rank(row[None, :], queries[:1])[0]
        assert batched.indices == single.indices and batched.scores == single.scores


@pytest.mark.parametrize("threaded", [True, False], ids=["model thread", "on the event loop"])
def test_the_batcher_gives_every_job_its_own_answer(bundle, threaded):
    steps, queries = _random_work(bundle, 40, seed=1)

    async def run(max_batch: int):
        metrics = Metrics()
        batcher = Batcher(metrics, max_batch=max_batch, max_wait_s=0.02, threaded=threaded)
        batcher.start()
        try:
            outcomes = await asyncio.gather(*(batcher.run(bundle, None, s, q) for s, q in zip(steps, queries, strict=True)))
        finally:
            batcher.close()
        return outcomes, metrics.batch_size.collect()[0].samples

    together, samples = asyncio.run(run(64))
    one_by_one, _ = asyncio.run(run(1))
    for a, b in zip(together, one_by_one, strict=True):
        np.testing.assert_allclose(a.state, b.state, rtol=1e-5, atol=1e-6)
        _same(a.top, b.top)
    count = next(s.value for s in samples if s.name.endswith("_count"))
    assert count < 40  # they did share batches
    if not threaded:  # the jobs of one pass of the loop, 64 at most per batch
        assert count == 1 and together[0].top is not None


def test_the_event_loop_batcher_keeps_batches_to_their_size_and_reports_failures(bundle):
    async def run():
        metrics = Metrics()
        batcher = Batcher(metrics, max_batch=8, threaded=False)
        batcher.start()
        try:
            jobs = [batcher.run(bundle, None, [1, 2], Query(3)) for _ in range(20)]
            jobs.append(batcher.run(bundle, None, [bundle.n_items], Query(3)))  # an index the model does not have
            outcomes = await asyncio.gather(*jobs, return_exceptions=True)
        finally:
            batcher.close()
        with pytest.raises(RuntimeError, match="closed"):
            await batcher.run(bundle, None, [1], Query(3))
        return outcomes, metrics.batch_size.collect()[0].samples

    outcomes, samples = asyncio.run(run())
    assert next(s.value for s in samples if s.name.endswith("_count")) == 3  # 8 + 8 + 5
    assert all(isinstance(o, Exception) for o in outcomes[16:])  # the last batch held the bad job: all of it fails
    assert all(not isinstance(o, Exception) and o.top.indices == outcomes[0].top.indices for o in outcomes[:16])


def _ask_concurrently(api, bodies: list[dict]) -> list:
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda body: api.post("/v1/recommend", json=body), bodies))


def test_concurrent_requests_get_the_answers_of_one_by_one():
    rng = np.random.default_rng(3)
    bodies = []
    for j in range(32):
        items = [str(1000 + i) for i in rng.integers(0, 60, size=int(rng.integers(1, 6)))]
        body = {"items": items, "k": int(rng.integers(1, 20)), "exclude_seen": bool(j % 3 == 0)}
        if j % 4 == 1:
            body["exclude"] = [str(1000 + i) for i in rng.integers(0, 60, size=5)]
        if j % 5 == 2:
            body["include"] = [str(1000 + i) for i in rng.integers(0, 60, size=12)]
        bodies.append(body)
    with client(model_a(), batch_wait_ms=20) as batched, client(model_a(), batch_max_size=1) as single:
        together = _ask_concurrently(batched, bodies)
        alone = [single.post("/v1/recommend", json=body) for body in bodies]
        for a, b in zip(together, alone, strict=True):
            assert a.status_code == b.status_code == 200
            assert top_ids(a) == top_ids(b)
            np.testing.assert_allclose(top_scores(a), top_scores(b), rtol=1e-5, atol=1e-6)
        text = batched.get("/metrics").text
        metric = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith("gru4rec_batch")}
        assert metric["gru4rec_batch_size_sum"] == 32 and metric["gru4rec_batch_size_count"] < 32
        assert 'gru4rec_batch_wait_seconds_bucket{le="0.025"}' in text


def test_several_workers_batch_on_the_event_loop_and_answer_the_same(monkeypatch):
    """GRU4REC_WORKERS > 1 (set by `serve --workers`): no model thread, the same answers."""
    bodies = [{"items": [str(1000 + i), str(1001 + i)], "k": 5} for i in range(12)]
    with client(model_a()) as one, client(model_a(), workers=2) as several:
        assert one.app.state.recommender.batcher.threaded
        assert not several.app.state.recommender.batcher.threaded
        for a, b in zip(_ask_concurrently(several, bodies), [one.post("/v1/recommend", json=b) for b in bodies], strict=True):
            assert a.status_code == b.status_code == 200 and top_ids(a) == top_ids(b) and top_scores(a) == top_scores(b)
    with client(model_a(), workers=2, model_thread=True) as forced:
        assert forced.app.state.recommender.batcher.threaded


def test_a_lone_request_does_not_wait_for_company():
    """At a trickle (gaps far above the wait), a request is run at once, not held for the batch wait."""

    async def run() -> float:
        bundle = load_bundle(model_a(), warmup_steps=1)
        metrics = Metrics()
        batcher = Batcher(metrics, max_batch=64, max_wait_s=0.2)
        batcher.start()
        try:
            for _ in range(3):
                await batcher.run(bundle, None, [1, 2], Query(5))
                await asyncio.sleep(0.3)
        finally:
            batcher.close()
        return metrics.batch_wait.collect()[0].samples

    samples = asyncio.run(run())
    total = next(s.value for s in samples if s.name.endswith("_sum"))
    assert total < 0.1  # three requests, none held anywhere near the 0.2 s wait


def test_without_the_kernels_pytorch_ranks_the_same(monkeypatch):
    """No C compiler (or GRU4REC_NATIVE=0): session steps in PyTorch and exact scoring through MKL give
    the same answers."""
    native.library.cache_clear()
    monkeypatch.setenv("GRU4REC_NATIVE", "0")
    try:
        fallback = load_bundle(model_big(), RetrievalSettings(mode="exact"), warmup_steps=1)
    finally:
        monkeypatch.delenv("GRU4REC_NATIVE")
        native.library.cache_clear()
    kernels = load_bundle(model_big(), RetrievalSettings(mode="exact"), warmup_steps=1)
    assert fallback.score_table is None and fallback.out_t is not None and kernels.score_table is not None
    assert fallback.gru_steps is None and kernels.gru_steps is not None
    steps, queries = _random_work(kernels, 16, seed=3)
    queries = [q for q in queries if q.include is None]
    zeros = np.zeros((16, kernels.state_size), dtype=np.float32)
    states = kernels.advance(zeros, steps)
    np.testing.assert_allclose(states, fallback.advance(zeros, steps), rtol=1e-5, atol=1e-6)
    h = kernels.session_vectors(states)[: len(queries)]
    for rows in (slice(None), slice(0, 1)):  # a batch (MKL: the table times the columns) and a lone session
        for ours, theirs in zip(kernels.rank(h[rows], queries[rows]), fallback.rank(h[rows], queries[rows]), strict=True):
            _same(ours, theirs)


def test_rows_too_wide_for_the_8_bit_screen_are_scored_by_pytorch(monkeypatch):
    """Layers over the kernels' 1,024 values: exact scores through MKL (the steps stay compiled)."""
    monkeypatch.setattr(native.ScoreTable, "MAX_DIM", 4)
    wide = load_bundle(model_big(), RetrievalSettings(mode="exact"), warmup_steps=1)
    assert wide.score_table is None and wide.out_t is not None and wide.gru_steps is not None
    monkeypatch.undo()
    kernels = load_bundle(model_big(), RetrievalSettings(mode="exact"), warmup_steps=1)
    steps, queries = _random_work(kernels, 8, seed=4)
    h = kernels.session_vectors(kernels.advance(np.zeros((8, kernels.state_size), dtype=np.float32), steps))
    for ours, theirs in zip(kernels.rank(h, queries), wide.rank(h, queries), strict=True):
        _same(ours, theirs)
