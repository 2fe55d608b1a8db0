"""Each baseline's scores on a small training set, worked out by hand from the published formulas.

Training sessions (item indices; times in seconds):
    A = [0, 1, 2]     at 100, 101, 102
    B = [1, 2, 3]     at 200, 201, 202
    C = [0, 2, 0, 4]  at 300 .. 303   (item 0 clicked twice)
    D = [3, 4]        at 400, 401
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from gru4rec.evaluation.baselines import BASELINES, fit_baseline, load_train_set, parse_baseline_spec
from gru4rec.data.sessions import load_eval_data
from gru4rec.foundation.errors import UserError
from gru4rec.evaluation.protocol import evaluate, evaluate_file
from conftest import require_shared

SESSIONS = {"A": ([0, 1, 2], 100), "B": ([1, 2, 3], 200), "C": ([0, 2, 0, 4], 300), "D": ([3, 4], 400)}


@pytest.fixture(scope="module")
def train(tmp_path_factory):
    rows = [(sid, f"item{i}", t0 + j) for sid, (items, t0) in SESSIONS.items() for j, i in enumerate(items)]
    path = tmp_path_factory.mktemp("bl") / "train.tsv"
    pd.DataFrame(rows, columns=["SessionId", "ItemId", "Time"]).to_csv(path, sep="\t", index=False)
    ts = load_train_set(path)
    # items are indexed by first appearance: item{i} -> i, so the hand-worked indices hold
    assert ts.item_map.lookup([f"item{i}" for i in range(5)]).tolist() == [0, 1, 2, 3, 4]
    return ts


def scores(baseline, clicks, times=None):
    """Scores after feeding `clicks` to a single session."""
    state = baseline.begin(1)
    for j, item in enumerate(clicks):
        kw = {"times": np.array([times[j]])} if baseline.needs_times else {}
        state = baseline.step(state, torch.tensor([item]), **kw)
    return baseline.score(state)[0].double().numpy()


def test_pop(train):
    assert scores(fit_baseline("pop", train), [4]).tolist() == [3, 2, 3, 2, 2]


def test_spop(train):
    s = scores(fit_baseline("spop", train), [1, 1, 3])
    pop = np.array([3, 2, 3, 2, 2]) / (np.array([3, 2, 3, 2, 2]) + 1)
    assert s == pytest.approx(pop + np.array([0, 2, 0, 1, 0]))


def test_itemknn(train):
    # supp (sessions with the item): [2, 2, 3, 2, 2]; co-occurring sessions with item 2: 0 (A, C),
    # 1 (A, B), 3 (B), 4 (C). sim = cooc / sqrt((supp_i + 20) (supp_j + 20))
    s = scores(fit_baseline("itemknn", train), [0, 2])
    expected = np.array([2 / math.sqrt(23 * 22), 2 / math.sqrt(23 * 22), 0, 1 / math.sqrt(23 * 22), 1 / math.sqrt(23 * 22)])
    assert s == pytest.approx(expected, rel=1e-6)
    # n_sims=1 keeps one neighbour per item; the 0/1 tie goes to the lower index
    s1 = scores(fit_baseline("itemknn:n_sims=1", train), [2])
    assert s1 == pytest.approx([2 / math.sqrt(23 * 22), 0, 0, 0, 0], rel=1e-6)


def test_sequential_rules(train):
    # rule(a, b) += 1/i when b follows a after i steps:
    # A: 0>1 1, 1>2 1, 0>2 1/2; B: 1>2 1, 2>3 1, 1>3 1/2;
    # C: 0>2 1, 2>0 1, 0>0 1/2, 0>4 1, 2>4 1/2, 0>4 1/3; D: 3>4 1
    sr = fit_baseline("sr", train)
    assert scores(sr, [3, 0]) == pytest.approx([0.5, 1, 1.5, 0, 1 + 1 / 3])
    assert scores(sr, [2]) == pytest.approx([1, 0, 0, 1, 0.5])
    assert scores(sr, [4]) == pytest.approx([0, 0, 0, 0, 0])
    # pruning=1 keeps the strongest rule per item; 2>3 and 2>0 tie and 2>3 was created first (in B)
    pruned = fit_baseline("sr:pruning=1", train)
    assert scores(pruned, [2]) == pytest.approx([0, 0, 0, 1, 0])
    assert scores(pruned, [0]) == pytest.approx([0, 0, 1.5, 0, 0])
    steps1 = fit_baseline("sr:steps=1", train)
    assert scores(steps1, [0]) == pytest.approx([0, 1, 1, 0, 1])


def test_vsknn_by_hand(train):
    # current session [2, 0]: div weights 2 -> 1/2, 0 -> 2/2; sum of squares 1.25.
    # candidates A, B, C (share 0 or 2), 3 distinct items each. cosine: overlap / (sqrt(1.25) sqrt(3))
    c = 1 / (math.sqrt(1.25) * math.sqrt(3))
    sim = {"A": 1.5 * c, "B": 0.5 * c, "C": 1.5 * c}
    # most recent shared click: A and C contain 0 (step 1, decay 1); B only 2 (step 2, decay 1/2)
    w = {"A": sim["A"], "B": sim["B"] / 2, "C": sim["C"]}
    expected = [w["A"] + w["C"], w["A"] + w["B"], w["A"] + w["B"] + w["C"], w["B"], w["C"]]
    assert scores(fit_baseline("vsknn", train), [2, 0]) == pytest.approx(expected)
    # k = 2 keeps A and C (B is the least similar)
    assert scores(fit_baseline("vsknn:k=2", train), [2, 0]) == pytest.approx(
        [w["A"] + w["C"], w["A"], w["A"] + w["C"], 0, w["C"]]
    )
    # sample_size = 2 keeps the 2 most recent candidates, C (ends 303) and B (202), before choosing
    assert scores(fit_baseline("vsknn:sample_size=2", train), [2, 0]) == pytest.approx(
        [w["C"], w["B"], w["B"] + w["C"], w["B"], w["C"]]
    )
    # vec similarity: overlap / number of distinct items in the current session (2)
    v = {"A": 1.5 / 2, "B": 0.5 / 2 / 2, "C": 1.5 / 2}
    assert scores(fit_baseline("vsknn:similarity=vec", train), [2, 0]) == pytest.approx(
        [v["A"] + v["C"], v["A"] + v["B"], v["A"] + v["B"] + v["C"], v["B"], v["C"]]
    )


def test_stan_by_hand(train):
    now = 1000.0
    w2, w0 = math.exp((1 - 2) / 1.02), 1.0  # position weights of the clicks 2 (first) and 0 (last)
    norm = math.sqrt(w2**2 + w0**2)
    snh = 5 * 24 * 3600

    def sim(overlap, end):
        return overlap / (norm * math.sqrt(3)) * math.exp(-(now - end) / snh)

    sa, sb, sc = sim(w2 + w0, 102), sim(w2, 202), sim(w2 + w0, 303)
    e1, e2 = math.exp(-1 / 2.05), math.exp(-2 / 2.05)
    # A = [0, 1, 2]: last shared click at position 3 (item 2): 0 at 1 -> e2, 1 at 2 -> e1, 2 -> 1
    # B = [1, 2, 3]: shared 2 at position 2: 1 -> e1, 2 -> 1, 3 -> e1
    # C = [0, 2, 0, 4]: last shared click at 3 (item 0): 0 (last at 3) -> 1, 2 at 2 -> e1, 4 at 4 -> e1
    expected = [
        sa * e2 + sc,
        sa * e1 + sb * e1,
        sa + sb + sc * e1,
        sb * e1,
        sc * e1,
    ]
    got = scores(fit_baseline("stan", train), [2, 0], times=[now - 1, now])
    assert got == pytest.approx(expected, rel=1e-5)
    # k = 1: only the most similar neighbour (C: as similar as A, but more recent)
    got1 = scores(fit_baseline("stan:k=1", train), [2, 0], times=[now - 1, now])
    assert got1 == pytest.approx([sc, 0, sc * e1, 0, sc * e1], rel=1e-5)


def test_batches_give_the_same_scores_as_single_sessions(train):
    """Rows are independent: scoring three sessions together = scoring each alone."""
    sessions = [[2, 0, 1], [4, 3, 3], [1, 2, 0]]
    times = np.array([[1000.0, 1001, 1002], [1100, 1101, 1102], [1200, 1201, 1202]])
    for name in BASELINES:
        b = fit_baseline(name, train)
        state = b.begin(3)
        for t in range(3):
            kw = {"times": times[:, t]} if b.needs_times else {}
            state = b.step(state, torch.tensor([s[t] for s in sessions]), **kw)
        together = b.score(state).double().numpy()
        for r, s in enumerate(sessions):
            assert together[r] == pytest.approx(scores(b, s, times[r]), rel=1e-6), name


def test_every_baseline_goes_through_evaluate(train, tmp_path):
    rows = [(1, "item0", 500.0), (1, "item2", 501.0), (1, "item4", 502.0), (2, "item3", 600.0), (2, "item4", 601.0)]
    path = tmp_path / "test.tsv"
    pd.DataFrame(rows, columns=["SessionId", "ItemId", "Time"]).to_csv(path, sep="\t", index=False)
    for name in BASELINES:
        result = evaluate_file(fit_baseline(name, train), path, train.item_map, cutoffs=[1, 5], item_counts=train.item_counts)
        assert result.n_events == 3
        assert 0 <= result.metrics["recall@5"] <= 1


def test_bad_specs():
    with pytest.raises(UserError, match="did you mean 'stan'"):
        parse_baseline_spec("stam")
    with pytest.raises(UserError, match="expected NAME:key=value"):
        parse_baseline_spec("sr:steps")
    assert parse_baseline_spec("vsknn:k=50, similarity=vec") == ("vsknn", {"k": 50, "similarity": "vec"})


def test_pop_on_rsc15_100k_is_near_the_reference_floor():
    """Sanity check against the data README: most-popular reaches Recall@20 ~0.09 on this family."""
    folder = require_shared("rsc15_100k")
    train = load_train_set(folder / "yoochoose-clicks-100k_train_tr.txt.gz")
    sessions, n_unknown = load_eval_data(folder / "yoochoose-clicks-100k_train_valid.txt.gz", train.item_map)
    result = evaluate(fit_baseline("pop", train), sessions, cutoffs=[20], n_unknown=n_unknown, list_metrics=False)
    assert result.n_events == 12455
    assert result.metrics["recall@20"] == pytest.approx(0.09, abs=0.01)
    assert 0.01 < result.metrics["mrr@20"] < 0.03
