"""Items scored in blocks give exactly what scoring the whole catalogue at once gave.

legacy_evaluate.py is the evaluation as it was (one full score matrix per step), kept as the
reference: every protocol, tie mode, exclude_seen and the coverage/popularity lists must come out
the same, bit for bit, whatever the block size.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from legacy_evaluate import evaluate as legacy_evaluate
from gru4rec.data.sessions import Sessions
from gru4rec.evaluation import blocks
from gru4rec.evaluation.protocol import ModelScorer, evaluate
from gru4rec.model.network import GRU4Rec
from gru4rec.training.params import HyperParams

N_ITEMS = 61
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model() -> GRU4Rec:
    torch.manual_seed(3)
    m = GRU4Rec(N_ITEMS, HyperParams(layers=(12,)).model)
    with torch.no_grad():
        m.By.weight.normal_()
    return m.eval()


@pytest.fixture(scope="module")
def sessions() -> Sessions:
    """Sessions with repeat clicks (so exclude_seen matters), lengths 2..12, one of length 1."""
    rng = np.random.default_rng(5)
    lengths = np.r_[rng.integers(2, 13, size=24), 1]
    items = rng.integers(0, 15, size=int(lengths.sum()))  # few items: many repeats
    items[::7] = rng.integers(0, N_ITEMS, size=len(items[::7]))
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    return Sessions(items.astype(np.int64), offsets, np.arange(len(lengths)).astype(str).astype(object))


COUNTS = np.random.default_rng(1).integers(0, 100, N_ITEMS)


def assert_same(got, want) -> None:
    np.testing.assert_array_equal(got.ranks, want.ranks)
    np.testing.assert_array_equal(got.positions, want.positions)
    np.testing.assert_array_equal(got.session_lengths, want.session_lengths)
    assert got.metrics == want.metrics  # exactly, coverage and popularity included
    assert (got.n_events, got.n_sessions) == (want.n_events, want.n_sessions)


@pytest.mark.parametrize("protocol", ["next", "last", "remaining"])
@pytest.mark.parametrize("ties", ["conservative", "standard", "median"])
@pytest.mark.parametrize("exclude_seen", [False, True])
def test_blocked_equals_whole_catalogue_and_former_evaluation(model, sessions, protocol, ties, exclude_seen):
    options = dict(cutoffs=[1, 5, 20], ties=ties, batch_size=7, protocol=protocol, exclude_seen=exclude_seen,
                   item_counts=COUNTS)
    want = legacy_evaluate(ModelScorer(model), sessions, **options)
    for item_block in (1, 8, None):
        assert_same(evaluate(ModelScorer(model), sessions, item_block=item_block, **options), want)


class FullScorer:
    """The same model through the plain SessionScorer interface only (score() of all items)."""

    needs_times = False

    def __init__(self, model: GRU4Rec) -> None:
        self.inner = ModelScorer(model)
        self.n_items = model.n_items

    def begin(self, n):
        return self.inner.begin(n)

    def step(self, state, items):
        return self.inner.step(state, items)

    def score(self, state):
        return self.inner.score(state)


@pytest.mark.parametrize("protocol", ["next", "remaining"])
def test_scorers_without_blocks_are_sliced_with_the_same_results(model, sessions, protocol):
    options = dict(cutoffs=[1, 10], batch_size=5, protocol=protocol, exclude_seen=True, item_counts=COUNTS)
    want = legacy_evaluate(FullScorer(model), sessions, **options)
    for item_block in (3, None):
        assert_same(evaluate(FullScorer(model), sessions, item_block=item_block, **options), want)


class ColumnsRoundDifferently(ModelScorer):
    """A scorer whose column scores differ in the last bits from its block scores (another matrix kernel)."""

    def score_columns(self, state, rows, columns):
        return torch.nextafter(super().score_columns(state, rows, columns), torch.tensor(float("inf")))


def test_rows_whose_relevant_score_differs_are_counted_again(model, sessions):
    options = dict(cutoffs=[1, 5], ties="standard", batch_size=6, protocol="remaining", exclude_seen=True)
    want = legacy_evaluate(ModelScorer(model), sessions, **options)
    assert_same(evaluate(ColumnsRoundDifferently(model), sessions, item_block=8, **options), want)


class Recording(ModelScorer):
    """Records the widest block asked for; the full score matrix must never be asked for."""

    widest = 0

    def score(self, state):
        raise AssertionError("evaluate asked for the whole catalogue at once")

    def score_block(self, state, rows, lo, hi):
        Recording.widest = max(Recording.widest, (rows.stop - rows.start) * (hi - lo))
        return super().score_block(state, rows, lo, hi)


def test_scores_held_at_once_are_bounded(model, sessions, monkeypatch):
    monkeypatch.setattr(blocks, "BLOCK_SCORES", 64)
    monkeypatch.setattr(blocks, "MIN_BLOCK", 2)
    Recording.widest = 0
    result = evaluate(Recording(model), sessions, cutoffs=[1, 5], batch_size=16)
    assert 0 < Recording.widest <= 64
    assert_same(result, legacy_evaluate(ModelScorer(model), sessions, cutoffs=[1, 5], batch_size=16))
