"""Evaluation protocol (reference section 3): tie modes, rank <= k, Recall@1 == MRR@1, no hidden state
carried between test sessions, unknown test items dropped and counted."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gru4rec.training.params import HyperParams
from gru4rec.data.sessions import ItemMap, Sessions, load_eval_data
from gru4rec.foundation.errors import UserError
from gru4rec.evaluation.protocol import ModelScorer, check_cutoffs, evaluate, metrics_from_ranks, target_ranks
from gru4rec.model.network import GRU4Rec


# ---- ranks and metrics on hand-made scores ----
def test_tie_modes_by_hand():
    scores = torch.tensor(
        [
            [3.0, 5.0, 5.0, 5.0, 1.0],  # target 1 tied with two others, one item above none
            [9.0, 5.0, 5.0, 1.0, 1.0],  # target 2 tied with one other, one item above
            [1.0, 2.0, 3.0, 4.0, 5.0],  # target 4: clear best
            [2.0, 2.0, 2.0, 2.0, 2.0],  # all tied
            [1.0, 2.0, 3.0, 4.0, 5.0],  # target 0: clear worst
        ]
    )
    targets = torch.tensor([1, 2, 4, 3, 0])
    standard = target_ranks(scores, targets, "standard").tolist()
    conservative = target_ranks(scores, targets, "conservative").tolist()
    median = target_ranks(scores, targets, "median").tolist()
    assert standard == [1, 2, 1, 1, 5]
    assert conservative == [3, 3, 1, 5, 5]
    assert median == [2, 2.5, 1, 3, 5]
    assert target_ranks(scores, targets).tolist() == conservative  # conservative is the default
    with pytest.raises(UserError):
        target_ranks(scores, targets, "optimistic")


def test_ties_at_the_k_boundary():
    # target tied with 2 others at the top: standard rank 1, median 2, conservative 3
    scores = torch.tensor([[0.5, 7.0, 7.0, 7.0, 0.1, 0.2]])
    t = torch.tensor([2])
    for mode, rank, hit_at_2 in [("standard", 1, 1.0), ("median", 2, 1.0), ("conservative", 3, 0.0)]:
        r = target_ranks(scores, t, mode).numpy().astype(np.float64)
        assert r.tolist() == [rank]
        m = metrics_from_ranks(r, [2, 3])
        assert m["recall@2"] == hit_at_2
        assert m["recall@3"] == 1.0  # rank == k counts: rank <= k, not rank < k
        assert m["mrr@3"] == pytest.approx(1.0 / rank)


def test_rank_le_k_not_lt_k():
    ranks = np.array([1.0, 2.0, 3.0, 20.0, 21.0])
    m = metrics_from_ranks(ranks, [1, 20])
    assert m["recall@20"] == pytest.approx(4 / 5)
    assert m["mrr@20"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 20) / 5)
    assert m["recall@1"] == pytest.approx(1 / 5)
    assert m["mrr@1"] == pytest.approx(1 / 5)


def test_recall_at_1_equals_mrr_at_1():
    ranks = np.random.default_rng(0).integers(1, 30, size=500).astype(np.float64)
    m = metrics_from_ranks(ranks, [1, 5, 10, 20])
    assert m["recall@1"] == m["mrr@1"]
    assert all(m[f"recall@{k}"] >= m[f"mrr@{k}"] for k in (5, 10, 20))


def test_non_finite_target_gets_worst_rank():
    scores = torch.tensor([[float("nan"), 1.0, 2.0], [1.0, 2.0, 3.0]])
    assert target_ranks(scores, torch.tensor([0, 2])).tolist() == [3, 1]


def test_cutoffs_checked():
    assert check_cutoffs([20, 5, 5, 1], 30) == [1, 5, 20]
    with pytest.raises(UserError):
        check_cutoffs([0, 5], 30)
    with pytest.raises(UserError):
        check_cutoffs([50], 30)


# ---- the full evaluator on a real (tiny) model ----
N_ITEMS = 25


def model() -> GRU4Rec:
    torch.manual_seed(0)
    m = GRU4Rec(N_ITEMS, HyperParams(layers=(16, 8), dropout_p_hidden=0.5).model)
    with torch.no_grad():
        m.By.weight.normal_()
    return m.eval()


def sessions_from(lists: list[list[int]]) -> Sessions:
    lengths = [len(x) for x in lists]
    return Sessions(
        np.concatenate([np.asarray(x, dtype=np.int64) for x in lists]),
        np.r_[0, np.cumsum(lengths)].astype(np.int64),
        np.array([f"s{i}" for i in range(len(lists))], dtype=object),
    )


def replay_by_hand(m: GRU4Rec, session: list[int]) -> list[float]:
    """One session from a zero state, conservative rank of each next item among all items."""
    ranks = []
    with torch.no_grad():
        h = m.init_hidden(1)
        for cur, nxt in zip(session[:-1], session[1:]):
            h = m.step(torch.tensor([cur]), h)
            s = m.score(h)[0]
            ranks.append(float((s >= s[nxt]).sum()))
    return ranks


# distinct lengths, so (session length, position) names one event
SESSIONS = [
    [3, 4, 5],
    [1, 1, 2, 8, 9, 10, 11],
    [7, 3],
    [0, 24, 12, 13, 14],
    [5, 6, 7, 8, 9, 20, 21, 22, 23],
    [2, 2, 2, 2],
]


def keyed(result) -> dict[tuple[int, int], float]:
    return {(int(n), int(p)): float(r) for n, p, r in zip(result.session_lengths, result.positions, result.ranks)}


def test_evaluate_matches_hand_replay_and_counts():
    m = model()
    res = evaluate(ModelScorer(m), sessions_from(SESSIONS), cutoffs=[1, 5, 20], batch_size=4)
    assert res.n_events == sum(len(s) - 1 for s in SESSIONS)
    assert res.n_sessions == len(SESSIONS)
    got = keyed(res)
    for s in SESSIONS:
        for p, r in enumerate(replay_by_hand(m, s), start=1):
            assert got[(len(s), p)] == r
    ranks = np.array(sorted(got.values()))
    expected = metrics_from_ranks(ranks, [1, 5, 20])
    for k in (1, 5, 20):
        for name in ("recall", "mrr"):
            assert res.metrics[f"{name}@{k}"] == pytest.approx(expected[f"{name}@{k}"], rel=1e-12)
    assert res.metrics["recall@1"] == res.metrics["mrr@1"]


@pytest.mark.parametrize("batch_size", [1, 2, 3, 512])
def test_no_state_carried_between_sessions(batch_size):
    m = model()
    sessions = sessions_from(SESSIONS)
    alone = {}
    for s in SESSIONS:  # one at a time
        alone.update(keyed(evaluate(ModelScorer(m), sessions_from([s]), cutoffs=[1], batch_size=1)))
    batched = keyed(evaluate(ModelScorer(m), sessions, cutoffs=[1], batch_size=batch_size))
    assert batched == alone


def test_result_independent_of_batch_neighbours():
    m = model()
    target = SESSIONS[3]
    alone = keyed(evaluate(ModelScorer(m), sessions_from([target]), cutoffs=[1]))
    for others in ([SESSIONS[4]], [SESSIONS[1], SESSIONS[2]], SESSIONS[:3] + SESSIONS[4:]):
        mixed = keyed(evaluate(ModelScorer(m), sessions_from(others + [target]), cutoffs=[1]))
        assert {k: v for k, v in mixed.items() if k[0] == len(target)} == alone


def test_repeated_sessions_get_identical_ranks():
    # the same session evaluated twice in one batch and again in the next batch: identical results
    m = model()
    s = SESSIONS[4]
    res = evaluate(ModelScorer(m), sessions_from([s, s, s]), cutoffs=[1], batch_size=2)
    by_pos: dict[int, set] = {}
    for p, r in zip(res.positions, res.ranks):
        by_pos.setdefault(int(p), set()).add(float(r))
    assert all(len(v) == 1 for v in by_pos.values())
    assert [by_pos[p].pop() for p in sorted(by_pos)] == replay_by_hand(m, s)


def test_length_one_sessions_ignored():
    m = model()
    res = evaluate(ModelScorer(m), sessions_from([[1], [2, 3], [4]]), cutoffs=[1])
    assert res.n_events == 1 and res.n_sessions == 1


def test_evaluate_rejects_bad_ties():
    with pytest.raises(UserError):
        evaluate(ModelScorer(model()), sessions_from(SESSIONS), cutoffs=[1], ties="best")


# ---- unknown test items ----
def write_tsv(path, rows):
    path.write_text("SessionId\tItemId\tTime\n" + "".join(f"{s}\t{i}\t{t}\n" for s, i, t in rows))
    return path


def test_unknown_items_dropped_counted_and_stitched(tmp_path):
    item_map = ItemMap.from_ids([f"i{k}" for k in range(N_ITEMS)])
    rows = [
        ("a", "i1", 1), ("a", "NEW1", 2), ("a", "i2", 3), ("a", "i3", 4),  # -> i1 i2 i3 (stitched)
        ("b", "NEW2", 5), ("b", "i4", 6),  # -> i4 alone: no prediction
        ("c", "i5", 7), ("c", "i6", 8),
        ("d", "NEW3", 9), ("d", "NEW1", 10),  # nothing known
    ]
    sessions, n_unknown = load_eval_data(write_tsv(tmp_path / "test.tsv", rows), item_map)
    assert n_unknown == 4
    assert sessions.items.tolist() == [1, 2, 3, 4, 5, 6]
    assert sessions.lengths.tolist() == [3, 1, 2]
    res = evaluate(ModelScorer(model()), sessions, cutoffs=[1, 5], n_unknown=n_unknown)
    assert res.n_events == 3 and res.n_sessions == 2
    assert res.to_dict()["n_unknown_dropped"] == 4
    assert sorted(res.ranks.tolist()) == sorted(replay_by_hand(model(), [1, 2, 3]) + replay_by_hand(model(), [5, 6]))


def test_test_file_without_known_items_is_user_error(tmp_path):
    item_map = ItemMap.from_ids([f"i{k}" for k in range(N_ITEMS)])
    path = write_tsv(tmp_path / "t.tsv", [("a", "x", 1), ("a", "y", 2)])
    with pytest.raises(UserError, match="t.tsv"):
        load_eval_data(path, item_map)
    # known items, but no session keeps two of them
    path = write_tsv(tmp_path / "u.tsv", [("a", "i1", 1), ("a", "y", 2), ("b", "i2", 3)])
    with pytest.raises(UserError, match="u.tsv"):
        load_eval_data(path, item_map)


def test_integer_item_ids_map_like_strings(tmp_path):
    item_map = ItemMap.from_ids([214536502, 214536500, 7])
    assert item_map.lookup(np.array([7, 214536502, 99])).tolist() == [2, 0, -1]
    assert item_map.lookup(np.array(["214536500"])).tolist() == [1]
