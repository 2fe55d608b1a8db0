"""Offline evaluation: every metric, protocol and tie mode on hand-made scores, plus the command.

The scorer below returns a fixed score row per last-clicked item, so every expected rank in these
tests was worked out by hand from the tables (not by calling the code under test).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from gru4rec.cli import main
from gru4rec.training.params import HyperParams
from gru4rec.data.sessions import ItemMap, Sessions
from gru4rec.foundation.errors import UserError
from gru4rec.evaluation.protocol import (
    ModelScorer,
    evaluate,
    evaluate_file,
    metrics_from_ranks,
    ranks_of_scores,
    target_ranks,
)
from gru4rec.model.network import GRU4Rec

# Score rows by last clicked item (6 items). T[1] has a tie at the top, T[3] a five-way tie.
T = torch.tensor([
    [0.0, 0.9, 0.5, 0.5, 0.1, 0.2],
    [0.3, 0.0, 0.8, 0.1, 0.8, 0.4],
    [0.6, 0.1, 0.7, 0.2, 0.3, 0.05],
    [0.2, 0.2, 0.2, 0.0, 0.9, 0.2],
    [0.9, 0.1, 0.1, 0.1, 0.1, 0.1],
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
])
# No ties: the top-k lists are unambiguous (for coverage / popularity).
T_DISTINCT = torch.tensor([
    [0.0, 5, 4, 3, 2, 1],
    [5, 0, 1, 2, 3, 4],
    [1, 2, 3, 4, 5, 0],
    [1, 2, 0, 3, 4, 5],
    [2, 1, 0, 5, 4, 3],
    [0, 1, 2, 3, 4, 5],
])
SESSIONS = [[0, 1, 2], [3, 1], [2, 2, 4, 0]]


class TableScorer:
    """SessionScorer whose scores depend only on the last click: table[last item]."""

    needs_times = False

    def __init__(self, table: torch.Tensor) -> None:
        self.table = table
        self.n_items = table.shape[1]

    def begin(self, n_sessions: int):
        return torch.full((n_sessions,), -1, dtype=torch.long)

    def step(self, state, items):
        return items.clone()

    def score(self, state):
        return self.table[state].clone()


def make_sessions(lists) -> Sessions:
    items = np.concatenate([np.asarray(s, dtype=np.int64) for s in lists])
    offsets = np.r_[0, np.cumsum([len(s) for s in lists])].astype(np.int64)
    return Sessions(items, offsets, np.array([str(i) for i in range(len(lists))], dtype=object))


def run(table=T, ties="conservative", **kw):
    return evaluate(TableScorer(table), make_sessions(SESSIONS), cutoffs=kw.pop("cutoffs", [1, 2, 3, 5]), ties=ties, **kw)


# --- ranks and metrics -------------------------------------------------------------------------


def test_tie_modes_by_hand():
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.1, 0.5]])
    target = torch.tensor([0])  # one higher (0.9), two others equal
    assert target_ranks(scores, target, "standard").item() == 2
    assert target_ranks(scores, target, "conservative").item() == 4
    assert target_ranks(scores, target, "median").item() == 3
    with pytest.raises(UserError, match="tie mode"):
        target_ranks(scores, target, "optimistic")


def test_non_finite_target_gets_worst_rank():
    scores = torch.tensor([[float("nan"), 1.0, 2.0], [float("-inf"), 1.0, 2.0]])
    for ties in ("standard", "conservative", "median"):
        assert target_ranks(scores, torch.tensor([0, 0]), ties).tolist() == [3, 3]


def test_ranks_match_a_sort_on_random_scores():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(50, 200, generator=gen)
    targets = torch.randint(0, 200, (50,), generator=gen)
    order = torch.argsort(scores, dim=1, descending=True)
    by_sort = (order == targets[:, None]).float().argmax(dim=1) + 1
    for ties in ("standard", "conservative", "median"):  # no ties: all three agree with a sort
        assert torch.equal(target_ranks(scores, targets, ties), by_sort.float())
    assert torch.equal(ranks_of_scores(scores, scores.gather(1, targets[:, None]).squeeze(1)), by_sort.float())


def test_metrics_from_ranks_by_hand():
    ranks = np.array([1, 2, 4, 30], dtype=float)
    m = metrics_from_ranks(ranks, [1, 5, 20], ndcg=True)
    assert m["recall@1"] == 0.25 and m["recall@5"] == 0.75 and m["recall@20"] == 0.75
    assert m["mrr@1"] == 0.25
    assert m["mrr@5"] == pytest.approx((1 + 1 / 2 + 1 / 4) / 4)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(5)) / 4)
    assert m["recall@1"] == m["mrr@1"] == m["ndcg@1"]  # the free unit test of the reference
    assert set(metrics_from_ranks(ranks, [5])) == {"recall@5", "mrr@5"}  # old default output unchanged


def test_rank_equal_to_k_is_a_hit():
    m = metrics_from_ranks(np.array([5.0, 6.0]), [5])
    assert m["recall@5"] == 0.5  # rank <= k, not rank < k


# --- protocols and tie modes through evaluate -------------------------------------------------

# next protocol, predictions (S1 after 0, after 1; S2 after 3; S3 after 2, 2, 4), ranks by hand:
NEXT_STANDARD = [1, 1, 2, 1, 3, 1]
NEXT_CONSERVATIVE = [1, 2, 5, 1, 3, 1]
NEXT_MEDIAN = [1, 1.5, 3.5, 1, 3, 1]


@pytest.mark.parametrize(
    "ties, expected",
    [("standard", NEXT_STANDARD), ("conservative", NEXT_CONSERVATIVE), ("median", NEXT_MEDIAN)],
)
def test_next_protocol_ranks_and_metrics(ties, expected):
    result = run(ties=ties)
    assert sorted(result.ranks.tolist()) == sorted(expected)
    assert result.n_events == 6 and result.n_sessions == 3
    exp = np.array(expected, dtype=float)
    for k in (1, 2, 3, 5):
        assert result.metrics[f"recall@{k}"] == pytest.approx((exp <= k).mean())
        assert result.metrics[f"mrr@{k}"] == pytest.approx(np.where(exp <= k, 1 / exp, 0).mean())
        assert result.metrics[f"ndcg@{k}"] == pytest.approx(np.where(exp <= k, 1 / np.log2(exp + 1), 0).mean())


def test_ties_at_the_k_boundary():
    # S1's second prediction ties with one other item at the top: standard rank 1, median 1.5,
    # conservative 2; S2's target ties five ways behind one item: 2 / 3.5 / 5.
    assert run(ties="standard").metrics["recall@1"] == pytest.approx(4 / 6)
    assert run(ties="median").metrics["recall@1"] == pytest.approx(3 / 6)
    assert run(ties="conservative").metrics["recall@1"] == pytest.approx(3 / 6)
    assert run(ties="standard").metrics["recall@2"] == pytest.approx(5 / 6)
    assert run(ties="standard").metrics["recall@3"] == pytest.approx(6 / 6)
    assert run(ties="conservative").metrics["recall@2"] == pytest.approx(4 / 6)
    assert run(ties="median").metrics["recall@3"] == pytest.approx(5 / 6)  # 3.5 > 3
    assert run(ties="conservative").metrics["recall@5"] == 1.0  # rank 5 at k = 5 is a hit


def test_last_protocol():
    result = run(protocol="last")
    # S1: [0, 1] -> 2 (tie at the top: conservative 2); S2: [3] -> 1 (5); S3: [2, 2, 4] -> 0 (1)
    assert sorted(result.ranks.tolist()) == [1, 2, 5]
    assert result.n_events == 3
    assert sorted(result.positions.tolist()) == [1, 2, 3]
    assert result.metrics["mrr@5"] == pytest.approx((1 + 1 / 2 + 1 / 5) / 3)
    assert sorted(run(protocol="last", ties="standard").ranks.tolist()) == [1, 1, 2]


def test_remaining_protocol():
    result = run(protocol="remaining")
    # S1 after 0: {1, 2} best 0.9 -> 1; after 1: {2} -> 2. S2 after 3: {1} -> 5.
    # S3 after 2: {2, 4, 0} best 0.7 -> 1; after [2, 2]: {4, 0} best 0.6 -> 2; after 4: {0} -> 1.
    assert sorted(result.ranks.tolist()) == sorted([1, 2, 5, 1, 2, 1])
    assert result.metrics["recall@1"] == pytest.approx(3 / 6)
    assert result.metrics["ndcg@2"] == pytest.approx((3 + 2 / math.log2(3)) / 6)
    # a hit anywhere in the remaining items counts, so remaining recall >= next recall
    nxt = run()
    assert all(result.metrics[f"recall@{k}"] >= nxt.metrics[f"recall@{k}"] for k in (1, 2, 3, 5))


def test_exclude_seen():
    result = run(exclude_seen=True)
    # S3's second click repeats item 2: masked, so the worst rank (6); T[2] without item 2 ranks 4 second.
    assert sorted(result.ranks.tolist()) == sorted([1, 2, 5, 6, 2, 1])


def test_coverage_and_popularity_by_hand():
    counts = np.array([10, 5, 0, 20, 2, 1])  # / max 20 -> [.5, .25, 0, 1, .1, .05]
    result = run(T_DISTINCT, cutoffs=[1, 2], item_counts=counts)
    # lists after clicks 0, 1, 3, 2, 2, 4: top-1 = 1, 0, 5, 4, 4, 3; top-2 adds 2, 5, 4, 3, 3, 4
    assert result.metrics["coverage@1"] == pytest.approx(5 / 6)
    assert result.metrics["coverage@2"] == pytest.approx(1.0)
    assert result.metrics["popularity@1"] == pytest.approx((0.25 + 0.5 + 0.05 + 0.1 + 0.1 + 1.0) / 6)
    assert result.metrics["popularity@2"] == pytest.approx((0.125 + 0.275 + 0.075 + 0.55 + 0.55 + 0.55) / 6)
    assert "popularity@1" not in run(T_DISTINCT, cutoffs=[1]).metrics  # needs the training counts


def test_breakdown_by_length_and_position():
    result = run()
    bd = result.to_dict()["breakdown"]
    by_len = {row["bucket"]: row["n_events"] for row in bd["by_session_length"]}
    by_pos = {row["bucket"]: row["n_events"] for row in bd["by_position"]}
    assert by_len == {"2": 1, "3": 2, "4": 3}
    assert by_pos == {"1": 3, "2": 2, "3": 1}
    first = next(r for r in bd["by_position"] if r["bucket"] == "1")
    assert first["metrics"]["recall@1"] == pytest.approx(2 / 3)  # conservative ranks 1, 5, 1


def test_every_session_starts_from_a_fresh_state():
    """Batching must not change anything: batch size 1 (one session at a time) = batch size 512."""
    torch.manual_seed(0)
    model = GRU4Rec(40, HyperParams(layers=(16,)).model).eval()
    rng = np.random.default_rng(0)
    sessions = make_sessions([rng.integers(0, 40, rng.integers(2, 9)) for _ in range(60)])
    a = evaluate(ModelScorer(model), sessions, cutoffs=[5], batch_size=1)
    b = evaluate(ModelScorer(model), sessions, cutoffs=[5], batch_size=512)
    assert a.metrics == pytest.approx(b.metrics)
    # and each prediction equals a replay of that session alone
    s0 = sessions.items[sessions.offsets[0]:sessions.offsets[1]]
    h = model.init_hidden(1)
    with torch.no_grad():
        for t in range(len(s0) - 1):
            h = model.step(torch.tensor([s0[t]]), h)
        single = target_ranks(model.score(h), torch.tensor([s0[-1]]))
    last = evaluate(ModelScorer(model), make_sessions([s0]), cutoffs=[5], protocol="last")
    assert last.ranks.tolist() == single.tolist()


# --- files and the command --------------------------------------------------------------------


def write_sessions(path, sessions, t0=1_000_000.0, first_id=0):
    rows = []
    for sid, items in enumerate(sessions, start=first_id):
        for j, item in enumerate(items):
            rows.append((sid, f"i{item}", t0 + sid * 100 + j))
    pd.DataFrame(rows, columns=["SessionId", "ItemId", "Time"]).to_csv(path, sep="\t", index=False)
    return path


def tiny_split(tmp_path, n_items=30, n_train=150, n_test=40, seed=0):
    """Synthetic sessions that mostly walk item -> item + 1, so anything sequential learns something."""
    rng = np.random.default_rng(seed)

    def session():
        start, length = rng.integers(0, n_items), rng.integers(2, 7)
        walk = [(start + j) % n_items for j in range(length)]
        return [x if rng.random() > 0.2 else int(rng.integers(0, n_items)) for x in walk]

    train = [session() for _ in range(n_train)]
    train.append(list(range(n_items)))  # every item occurs in training
    test = [session() for _ in range(n_test)]
    return (
        write_sessions(tmp_path / "train.tsv", train),
        write_sessions(tmp_path / "test.tsv", test, t0=2_000_000.0, first_id=10_000),
    )


def test_unknown_test_items_are_dropped_counted_and_stitched(tmp_path):
    item_map = ItemMap.from_ids([f"i{i}" for i in range(6)])
    path = write_sessions(tmp_path / "t.tsv", [[0, 99, 1, 2], [3, 98], [2, 2, 4, 0]])
    result = evaluate_file(TableScorer(T), path, item_map, cutoffs=[1, 2, 3, 5])
    assert result.n_unknown == 2
    # [0, 99, 1, 2] is evaluated as [0, 1, 2]; [3, 98] leaves one event, so no prediction
    assert result.n_events == 5 and result.n_sessions == 2


def test_evaluate_command_baseline_json_and_plot(tmp_path, capsys):
    train, test = tiny_split(tmp_path)
    out = tmp_path / "report.json"
    png = tmp_path / "plot.png"
    rc = main(["evaluate", "--baseline", "sr", str(train), str(test), "--json", str(out), "--plot", str(png), "-q"])
    assert rc == 0
    report = json.loads(out.read_text())
    for key in ("recall@20", "mrr@20", "ndcg@20", "coverage@20", "popularity@20", "recall@1", "mrr@5"):
        assert 0.0 <= report["metrics"][key] <= 1.0
    assert report["protocol"] == "next" and report["ties"] == "conservative"
    assert report["n_unknown_dropped"] == 0 and report["baseline"] == "sr"
    assert {"by_session_length", "by_position"} <= set(report["breakdown"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "recall" in printed and "session length" in printed


def test_evaluate_command_model(tmp_path):
    from gru4rec.training.run import train

    train_file, test = tiny_split(tmp_path)
    train(train_file, tmp_path / "model", HyperParams(layers=(16,), n_epochs=1, n_sample=16, batch_size=16), device="cpu")
    out = tmp_path / "r.json"
    rc = main(["evaluate", str(tmp_path / "model"), str(test), "--protocol", "remaining", "--exclude-seen",
               "--ties", "median", "--cutoffs", "1", "10", "--json", str(out), "--device", "cpu", "-q"])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["protocol"] == "remaining" and report["exclude_seen"] is True
    assert set(report["metrics"]) == {f"{m}@{k}" for m in ("recall", "mrr", "ndcg", "coverage", "popularity") for k in (1, 10)}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--baseline", "nope"], "unknown baseline 'nope'"),
        (["--baseline", "pop", "--cutoffs", "0"], "positive"),
        (["--baseline", "pop", "--cutoffs", "31"], "larger than the catalogue"),
        (["--baseline", "vsknn:k=0"], "k must be >= 1"),
        (["--baseline", "vsknn:kk=3"], "unknown parameter"),
    ],
)
def test_evaluate_command_bad_input(tmp_path, caplog, argv, message):
    train, test = tiny_split(tmp_path)
    rc = main(["evaluate", str(train), str(test), *argv])
    assert rc == 2
    assert message in caplog.text


def test_evaluate_command_no_overlap_and_missing_model(tmp_path, caplog):
    train, _ = tiny_split(tmp_path)
    other = write_sessions(tmp_path / "other.tsv", [[100, 101], [102, 103]])
    assert main(["evaluate", "--baseline", "pop", str(train), str(other)]) == 2
    assert "none of its 4 events has an item the model knows" in caplog.text
    assert main(["evaluate", str(tmp_path / "no-such-model"), str(other)]) == 2
    assert "model directory not found" in caplog.text
