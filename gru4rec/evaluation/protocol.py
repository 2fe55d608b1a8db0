"""Offline evaluation with full ranking, as in the reference protocol, plus what tuning needs.

Each test session is replayed event by event from a zero state; after each event every training
item is ranked. Test events whose item the model does not know are dropped beforehand
(data.load_eval_data) and the session is stitched together; their count is reported.

Protocols (which predictions are made and what counts as the relevant item):
  next       after every event, the next event is the only relevant item (the reference protocol;
             one prediction per event that has a successor);
  last       one prediction per session: the last event, predicted from all the events before it;
  remaining  after every event, any later item of the session is relevant. Recall@k is 1 when at
             least one remaining item is in the top k; MRR@k and NDCG@k use the best-ranked remaining
             item (rank r*: 1/r* and 1/log2(r* + 1) when r* <= k, else 0). Ranks grow with falling
             scores, so r* is the rank of the highest-scored remaining item.

Metrics, averaged over predictions (rank r of the relevant item, 1 = best, by tie mode):
  recall@k      r <= k (the hit rate; one relevant item)
  mrr@k         1/r if r <= k else 0
  ndcg@k        1/log2(r + 1) if r <= k else 0 (one relevant item, so the ideal DCG is 1)
  coverage@k    share of the catalogue that appears in at least one top-k list
  popularity@k  mean over lists of the mean, over the k listed items, of training count / the
                largest training count (session-rec's Popularity@k: 1 = only the top seller)
Ties (standard: 1 + #higher; conservative: #(higher or equal), target included; median: between)
decide r; top-k lists for coverage/popularity come from torch.topk (ties there broken arbitrarily).
With exclude_seen, items already in the session prefix get a score of -inf: a repeat click is then
a miss (worst rank), as it would be for a service that never recommends seen items.

Sessions are batched by length (longest first) so a batch shrinks by dropping its last rows as
sessions end; every batch starts from a fresh state, so nothing leaks between sessions. Ranks are
comparison counts (no sort); only the coverage/popularity lists use top-k. The items are scored a
block at a time (gru4rec.evaluation.blocks), so memory stays bounded whatever the catalogue, with the
same results as scoring them all at once. Any recommender that implements `SessionScorer` (the GRU,
the baselines) goes through this code.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from gru4rec.data.sessions import Events, ItemMap, Sessions, known_event_times, load_eval_data, read_events
from gru4rec.evaluation.blocks import StepScores, TopLists, block_items, rank_step
from gru4rec.foundation.errors import UserError
from gru4rec.foundation.logs import progress
from gru4rec.model.network import GRU4Rec

TIE_MODES = ("standard", "conservative", "median")
PROTOCOLS = ("next", "last", "remaining")
DEFAULT_CUTOFFS = (1, 5, 10, 20)
RANK_METRICS = ("recall", "mrr", "ndcg")
LIST_METRICS = ("coverage", "popularity")
# Breakdown buckets (inclusive ranges; None = open-ended): session length after dropping unknown
# items, and position = number of events seen before the prediction.
LENGTH_BUCKETS = ((2, 2), (3, 3), (4, 4), (5, 6), (7, 9), (10, 14), (15, 19), (20, None))
POSITION_BUCKETS = ((1, 1), (2, 2), (3, 3), (4, 5), (6, 9), (10, 14), (15, 19), (20, None))


class SessionScorer(Protocol):
    """Scores every item as the next click of a batch of sessions, one click at a time.

    All rows advance together: `step` feeds one click to each of the first len(items) rows and drops
    the rest, so after t steps every row holds the first t clicks of its session. A scorer that needs
    the clicks' Unix times (e.g. STAN) sets `needs_times = True`; its `step` then also gets
    `times=` (a float64 numpy array aligned with `items`).
    """

    n_items: int

    def begin(self, n_sessions: int) -> Any:
        """State of `n_sessions` empty sessions."""

    def step(self, state: Any, items: Tensor) -> Any:
        """Feed one click to each of the first len(items) sessions; the other rows are dropped."""

    def score(self, state: Any) -> Tensor:
        """Scores [rows, n_items] on any device; higher is better. evaluate never writes into it.

        A scorer may also score items a block at a time, which bounds evaluation's memory: see
        ModelScorer.score_block and score_columns (gru4rec.evaluation.blocks uses them when present).
        """


class ModelScorer:
    """SessionScorer over a GRU4Rec model (hidden state per row)."""

    needs_times = False

    def __init__(self, model: GRU4Rec) -> None:
        self.model = model
        self.n_items = model.n_items
        self.device = model.Wy.weight.device

    def begin(self, n_sessions: int) -> list[Tensor]:
        return self.model.init_hidden(n_sessions, self.device)

    def step(self, state: list[Tensor], items: Tensor) -> list[Tensor]:
        n = len(items)
        return self.model.step(items, [h[:n] for h in state])

    def score(self, state: list[Tensor]) -> Tensor:
        return self.model.score(state)

    def score_block(self, state: list[Tensor], rows: slice, lo: int, hi: int) -> Tensor:
        """Scores [rows, hi - lo] of items lo..hi-1: the same values as the columns of score(state)."""
        h, one = self._rows(state, rows)
        out = torch.addmm(self.model.By.weight[lo:hi].T, h, self.model.Wy.weight[lo:hi].T)
        return out[:1] if one else out

    def score_columns(self, state: list[Tensor], rows: slice, columns: Tensor) -> Tensor:
        """Scores [rows, c] of items columns[r, j] for row r, as score_block gives them."""
        h, one = self._rows(state, rows)
        items, where = torch.unique(columns, return_inverse=True)
        out = torch.addmm(self.model.By.weight[items].T, h, self.model.Wy.weight[items].T)
        return (out[:1] if one else out).gather(1, where)

    @staticmethod
    def _rows(state: list[Tensor], rows: slice) -> tuple[Tensor, bool]:
        """The session vectors of `rows`; a single row is doubled, as a one-row product takes another
        kernel whose sums round differently (every score then comes from the same kind of product)."""
        h = state[-1][rows]
        return (torch.cat([h, h]), True) if len(h) == 1 else (h, False)


def _check_ties(ties: str) -> None:
    if ties not in TIE_MODES:
        raise UserError(f"unknown tie mode {ties!r}: use one of {', '.join(TIE_MODES)}")


def ranks_of_scores(scores: Tensor, target_scores: Tensor, ties: str = "conservative") -> Tensor:
    """Rank (1 = best) that a score of `target_scores[i]` takes in row i of `scores`, by tie mode.

    The target is assumed to be one of the row's columns. A non-finite target gets the worst rank.
    """
    _check_ties(ties)
    target = target_scores.unsqueeze(1)
    # int32 accumulation: summing a bool matrix into the default int64 is ~3x slower on CPU
    if ties == "conservative":
        ranks = (scores >= target).sum(dim=1, dtype=torch.int32).float()
    else:
        greater = (scores > target).sum(dim=1, dtype=torch.int32).float()
        if ties == "standard":
            ranks = greater + 1
        else:
            equal = (scores == target).sum(dim=1, dtype=torch.int32).float()
            ranks = greater + 1 + 0.5 * (equal - 1)
    bad = ~torch.isfinite(target_scores)
    return torch.where(bad, torch.full_like(ranks, scores.shape[1]), ranks)


def target_ranks(scores: Tensor, targets: Tensor, ties: str = "conservative") -> Tensor:
    """Rank of each row's target among all columns (1 = best), by tie mode.

    standard: 1 + #(scores > target); conservative: #(scores >= target), the target included;
    median: halfway between. A non-finite target score gets the worst rank.
    """
    return ranks_of_scores(scores, scores.gather(1, targets.unsqueeze(1)).squeeze(1), ties)


def metrics_from_ranks(ranks: np.ndarray, cutoffs: Sequence[int], ndcg: bool = False) -> dict[str, float]:
    """Recall@k (rank <= k) and MRR@k (1/rank when rank <= k, else 0), averaged over events.

    With ndcg=True also NDCG@k (1/log2(rank + 1) when rank <= k, else 0; one relevant item).
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    out: dict[str, float] = {}
    n = len(ranks)
    for k in cutoffs:
        hit = ranks <= k
        out[f"recall@{k}"] = float(hit.mean()) if n else 0.0
        out[f"mrr@{k}"] = float(np.where(hit, 1.0 / ranks, 0.0).mean()) if n else 0.0
        if ndcg:
            out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0).mean()) if n else 0.0
    return out


def order_metrics(metrics: dict[str, float], cutoffs: Sequence[int]) -> dict[str, float]:
    """Metric dict in a stable, readable order: by metric name, then by cut-off."""
    names = (*RANK_METRICS, *LIST_METRICS)
    keys = [f"{n}@{k}" for n in names for k in cutoffs if f"{n}@{k}" in metrics]
    return {key: metrics[key] for key in keys} | {k: v for k, v in metrics.items() if k not in keys}


def _bucket_label(lo: int, hi: int | None) -> str:
    if hi is None:
        return f"{lo}+"
    return str(lo) if lo == hi else f"{lo}-{hi}"


@dataclass
class EvalResult:
    """Metrics plus the per-prediction ranks, kept so that breakdowns need no second pass."""

    metrics: dict[str, float]
    n_events: int  # predictions made
    n_sessions: int  # sessions with at least one prediction
    n_unknown: int = 0  # test events dropped because the model does not know their item
    ranks: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    positions: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64), repr=False)
    session_lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64), repr=False)
    protocol: str = "next"
    ties: str = "conservative"
    exclude_seen: bool = False
    cutoffs: tuple[int, ...] = DEFAULT_CUTOFFS
    n_items: int = 0

    def breakdown(self) -> dict[str, list[dict[str, Any]]]:
        """Rank metrics per session-length and per position bucket (where models differ most)."""
        out: dict[str, list[dict[str, Any]]] = {}
        for key, values, buckets in (
            ("by_session_length", self.session_lengths, LENGTH_BUCKETS),
            ("by_position", self.positions, POSITION_BUCKETS),
        ):
            rows = []
            for lo, hi in buckets:
                mask = (values >= lo) & (values <= (hi if hi is not None else np.iinfo(np.int64).max))
                if not mask.any():
                    continue
                rows.append({
                    "bucket": _bucket_label(lo, hi),
                    "n_events": int(mask.sum()),
                    "metrics": metrics_from_ranks(self.ranks[mask], self.cutoffs, ndcg=True),
                })
            out[key] = rows
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "ties": self.ties,
            "exclude_seen": self.exclude_seen,
            "cutoffs": list(self.cutoffs),
            "n_items": self.n_items,
            "metrics": self.metrics,
            "n_events": self.n_events,
            "n_sessions": self.n_sessions,
            "n_unknown_dropped": self.n_unknown,
            "breakdown": self.breakdown(),
        }


def check_cutoffs(cutoffs: Sequence[int], n_items: int) -> list[int]:
    """Sorted distinct cut-offs; each must be in 1..n_items (a longer list than the catalogue is meaningless)."""
    cutoffs = sorted(set(int(k) for k in cutoffs))
    if not cutoffs or cutoffs[0] < 1:
        raise UserError(f"cut-offs must be positive integers, got {list(cutoffs)}")
    if cutoffs[-1] > n_items:
        raise UserError(f"cut-off {cutoffs[-1]} is larger than the catalogue ({n_items} items)")
    return cutoffs


def check_metric(metric: str, n_items: int | None = None) -> int:
    """The cut-off K of a selection metric recall@K / mrr@K / ndcg@K (at most the catalogue size)."""
    name, _, k = metric.partition("@")
    limit = n_items if n_items is not None else float("inf")
    if name not in RANK_METRICS or not k.isdigit() or not 1 <= int(k) <= limit:
        bound = f" with 1 <= K <= {n_items}" if n_items is not None else ""
        raise UserError(f"--metric {metric!r}: expected recall@K, mrr@K or ndcg@K{bound}, e.g. mrr@20")
    return int(k)


def check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol {protocol!r}: use one of {', '.join(PROTOCOLS)}")


class _ListStats:
    """Accumulates coverage@k and popularity@k from the top-k lists, on the scores' device."""

    def __init__(self, n_items: int, cutoffs: Sequence[int], item_counts: np.ndarray | None, device) -> None:
        self.cutoffs = list(cutoffs)
        self.kmax = max(cutoffs)
        self.n_items = n_items
        self.best_pos = torch.full((n_items,), self.kmax, dtype=torch.long, device=device)
        self.pop = None
        if item_counts is not None:
            counts = torch.as_tensor(np.asarray(item_counts, dtype=np.float64), device=device)
            if len(counts) != n_items:
                raise ValueError(f"item_counts has {len(counts)} entries for {n_items} items")
            self.pop = counts / counts.max().clamp_min(1.0)
        self.pop_sum = torch.zeros(len(self.cutoffs), dtype=torch.float64, device=device)
        self.n_lists = 0

    def add(self, values: Tensor, idx: Tensor) -> None:
        """One top-kmax list per row: the scores (best first) and the items."""
        pos = torch.arange(self.kmax, device=values.device).expand_as(idx)
        pos = torch.where(torch.isfinite(values), pos, self.kmax)  # masked (-inf) items are not listed
        self.best_pos.scatter_reduce_(0, idx.reshape(-1), pos.reshape(-1), reduce="amin")
        if self.pop is not None:
            cum = self.pop[idx].cumsum(dim=1)
            ks = torch.tensor(self.cutoffs, device=values.device)
            self.pop_sum += (cum[:, ks - 1] / ks).sum(dim=0)
        self.n_lists += len(values)

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        best = self.best_pos.cpu().numpy()
        for i, k in enumerate(self.cutoffs):
            out[f"coverage@{k}"] = float((best < k).mean())
        if self.pop is not None:
            for i, k in enumerate(self.cutoffs):
                out[f"popularity@{k}"] = float(self.pop_sum[i].item() / max(self.n_lists, 1))
        return out


@torch.inference_mode()
def evaluate(
    scorer: SessionScorer,
    sessions: Sessions,
    cutoffs: Sequence[int] = DEFAULT_CUTOFFS,
    ties: str = "conservative",
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    n_unknown: int = 0,
    *,
    protocol: str = "next",
    exclude_seen: bool = False,
    item_counts: np.ndarray | None = None,
    times: np.ndarray | None = None,
    list_metrics: bool = True,
    item_block: int | None = None,
) -> EvalResult:
    """Replay `sessions` through `scorer` and rank the whole catalogue for every prediction.

    `item_counts` (training counts per item) enables popularity@k; `times` (aligned with
    sessions.items, see data.known_event_times) is required by scorers with needs_times. list_metrics=False
    skips the top-k lists (coverage/popularity) when only rank metrics are wanted. `item_block` sets
    how many items are scored at once (default: a bounded number of scores per block); the results
    do not depend on it.
    """
    _check_ties(ties)
    check_protocol(protocol)
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    n_items = int(scorer.n_items)
    cutoffs = check_cutoffs(cutoffs, n_items)
    if getattr(scorer, "needs_times", False) and (times is None or len(times) != sessions.n_events):
        raise ValueError("this scorer needs event times aligned with sessions.items (see data.known_event_times)")
    lengths = sessions.lengths
    order = np.argsort(-lengths, kind="stable")
    order = order[lengths[order] >= 2]
    replay = _Replay(
        scorer, sessions, torch.device(device), protocol, ties, exclude_seen, times, n_items, item_block,
        _ListStats(n_items, cutoffs, item_counts, torch.device(device)) if list_metrics else None,
    )
    n_predictions = len(order) if protocol == "last" else int((lengths[order] - 1).sum())
    bar = progress(total=n_predictions, desc="evaluate", unit="ev")
    for lo in range(0, len(order), batch_size):
        replay.batch(order[lo : lo + batch_size], bar)
    bar.close()
    return replay.result(cutoffs, len(order), n_unknown)


class _Replay:
    """One evaluation in progress: replays batches of sessions and keeps every prediction's rank."""

    def __init__(self, scorer, sessions: Sessions, device: torch.device, protocol: str, ties: str,
                 exclude_seen: bool, times: np.ndarray | None, n_items: int, item_block: int | None,
                 stats: _ListStats | None) -> None:
        self.scorer, self.sessions, self.device = scorer, sessions, device
        self.protocol, self.ties, self.exclude_seen, self.times = protocol, ties, exclude_seen, times
        self.needs_times = bool(getattr(scorer, "needs_times", False))
        self.n_items, self.item_block, self.stats = n_items, item_block, stats
        self.items = torch.from_numpy(sessions.items).to(device)
        self.ranks: list[Tensor] = []
        self.positions: list[np.ndarray] = []
        self.session_lengths: list[np.ndarray] = []

    def batch(self, chunk: np.ndarray, bar) -> None:
        """Replay sessions `chunk` (longest first) from a fresh state, ranking after every click."""
        chunk_len = self.sessions.lengths[chunk]
        starts_np = self.sessions.offsets[chunk]
        starts = torch.from_numpy(starts_np).to(self.device)
        lens = torch.from_numpy(chunk_len).to(self.device)
        state = self.scorer.begin(len(chunk))
        for t in range(int(chunk_len[0]) - 1):
            m = int((chunk_len > t + 1).sum())  # sessions that still have a next event
            clicked = self.items[starts[:m] + t]
            if self.needs_times:
                state = self.scorer.step(state, clicked, times=self.times[starts_np[:m] + t])
            else:
                state = self.scorer.step(state, clicked)
            first = int((chunk_len > t + 2).sum()) if self.protocol == "last" else 0  # last: only sessions ending now
            if first == m:
                continue
            ranks = self._rank(state, slice(first, m), starts[first:m], lens[first:m], t)
            self.ranks.append(ranks.cpu())
            self.positions.append(np.full(m - first, t + 1, dtype=np.int64))
            self.session_lengths.append(chunk_len[first:m])
            bar.update(m - first)

    def _rank(self, state, rows: slice, starts: Tensor, lens: Tensor, t: int) -> Tensor:
        """Ranks of the relevant item of rows `rows` after their (t+1)-th click."""
        if self.protocol == "remaining":
            offs = torch.arange(int(lens[0]) - t - 1, device=self.device)
            valid = offs < (lens - t - 1).unsqueeze(1)
            columns = self.items[starts.unsqueeze(1) + t + 1 + torch.where(valid, offs, 0)]
        else:
            columns = self.items[starts + t + 1].unsqueeze(1)
            valid = torch.ones_like(columns, dtype=torch.bool)
        seen = self.items[starts.unsqueeze(1) + torch.arange(t + 1, device=self.device)] if self.exclude_seen else None
        lists = TopLists(self.stats.kmax) if self.stats is not None else None
        block = block_items(len(starts), self.n_items, self.item_block)
        scores = StepScores(self.scorer, state, rows, self.device)
        ranks = rank_step(scores, columns, valid, seen, self.ties, self.n_items, block, lists)
        if lists is not None:
            self.stats.add(lists.values, lists.index)
        return ranks

    def result(self, cutoffs: list[int], n_sessions: int, n_unknown: int) -> EvalResult:
        ranks = torch.cat(self.ranks).numpy().astype(np.float64) if self.ranks else np.zeros(0)
        metrics = metrics_from_ranks(ranks, cutoffs, ndcg=True)
        if self.stats is not None:
            metrics.update(self.stats.metrics())
        return EvalResult(
            metrics=order_metrics(metrics, cutoffs), n_events=len(ranks), n_sessions=n_sessions, n_unknown=n_unknown,
            ranks=ranks,
            positions=np.concatenate(self.positions) if self.positions else np.zeros(0, dtype=np.int64),
            session_lengths=np.concatenate(self.session_lengths) if self.session_lengths else np.zeros(0, dtype=np.int64),
            protocol=self.protocol, ties=self.ties, exclude_seen=self.exclude_seen, cutoffs=tuple(cutoffs),
            n_items=self.n_items,
        )


def evaluate_file(
    scorer: SessionScorer,
    test_path: str | os.PathLike[str],
    item_map: ItemMap,
    *,
    item_counts: np.ndarray | None = None,
    events: Events | None = None,
    **options: Any,
) -> EvalResult:
    """Load a test file against the scorer's items (unknown items dropped and counted) and evaluate it.

    `events` (data.read_events(test_path)) saves re-reading the file for every scorer compared.
    `options` are evaluate's (cutoffs, ties, batch_size, device, protocol, exclude_seen, ...).
    """
    events = events if events is not None else read_events(test_path)
    sessions, n_unknown = load_eval_data(test_path, item_map, events)
    times = known_event_times(events, item_map) if getattr(scorer, "needs_times", False) else None
    return evaluate(scorer, sessions, n_unknown=n_unknown, item_counts=item_counts, times=times, **options)
