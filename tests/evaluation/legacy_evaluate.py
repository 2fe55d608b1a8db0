"""Full-ranking evaluation as it was before items were scored in blocks: the whole score matrix of a
step at once. Kept verbatim (its ListStats and evaluate) as the reference that the blocked evaluation
must reproduce exactly (tests/evaluation/test_blocked_evaluation.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from gru4rec.data.sessions import Sessions
from gru4rec.evaluation.protocol import (
    DEFAULT_CUTOFFS,
    EvalResult,
    _check_ties,
    check_cutoffs,
    check_protocol,
    metrics_from_ranks,
    order_metrics,
    ranks_of_scores,
    target_ranks,
)
from gru4rec.foundation.errors import UserError
from gru4rec.foundation.logs import progress


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

    def add(self, scores: Tensor) -> None:
        values, idx = torch.topk(scores, self.kmax, dim=1)
        pos = torch.arange(self.kmax, device=scores.device).expand_as(idx)
        pos = torch.where(torch.isfinite(values), pos, self.kmax)  # masked (-inf) items are not listed
        self.best_pos.scatter_reduce_(0, idx.reshape(-1), pos.reshape(-1), reduce="amin")
        if self.pop is not None:
            cum = self.pop[idx].cumsum(dim=1)
            ks = torch.tensor(self.cutoffs, device=scores.device)
            self.pop_sum += (cum[:, ks - 1] / ks).sum(dim=0)
        self.n_lists += len(scores)

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
    scorer,
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
) -> EvalResult:
    """Replay `sessions` through `scorer` and rank the whole catalogue for every prediction.

    `item_counts` (training counts per item) enables popularity@k; `times` (aligned with
    sessions.items, see data.known_event_times) is required by scorers with needs_times. list_metrics=False
    skips the top-k lists (coverage/popularity) when only rank metrics are wanted.
    """
    _check_ties(ties)
    check_protocol(protocol)
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    n_items = int(scorer.n_items)
    cutoffs = check_cutoffs(cutoffs, n_items)
    needs_times = bool(getattr(scorer, "needs_times", False))
    if needs_times and (times is None or len(times) != sessions.n_events):
        raise ValueError("this scorer needs event times aligned with sessions.items (see data.known_event_times)")
    device = torch.device(device)
    lengths = sessions.lengths
    order = np.argsort(-lengths, kind="stable")
    order = order[lengths[order] >= 2]
    items = torch.from_numpy(sessions.items).to(device)
    stats = _ListStats(n_items, cutoffs, item_counts, device) if list_metrics else None
    all_ranks, all_pos, all_len = [], [], []
    n_predictions = len(order) if protocol == "last" else int((lengths[order] - 1).sum())
    bar = progress(total=n_predictions, desc="evaluate", unit="ev")
    for lo in range(0, len(order), batch_size):
        chunk = order[lo : lo + batch_size]
        chunk_len = lengths[chunk]
        starts_np = sessions.offsets[chunk]
        starts = torch.from_numpy(starts_np).to(device)
        lens = torch.from_numpy(chunk_len).to(device)
        state = scorer.begin(len(chunk))
        for t in range(int(chunk_len[0]) - 1):
            m = int((chunk_len > t + 1).sum())  # sessions that still have a next event
            clicked = items[starts[:m] + t]
            if needs_times:
                state = scorer.step(state, clicked, times=times[starts_np[:m] + t])
            else:
                state = scorer.step(state, clicked)
            first = int((chunk_len > t + 2).sum()) if protocol == "last" else 0  # last: only sessions ending now
            if first == m:
                continue
            scores = scorer.score(state)
            scores = scores[first:m] if first else scores
            scores = scores.to(device=device, dtype=torch.float32)
            rows = slice(first, m)
            if exclude_seen:
                seen = items[starts[rows].unsqueeze(1) + torch.arange(t + 1, device=device)]
                scores = scores.scatter(1, seen, float("-inf"))
            if protocol == "remaining":
                n_rem = int(chunk_len[first]) - t - 1
                offs = torch.arange(n_rem, device=device)
                valid = offs < (lens[rows] - t - 1).unsqueeze(1)
                idx = starts[rows].unsqueeze(1) + t + 1 + torch.where(valid, offs, 0)
                cand = scores.gather(1, items[idx]).masked_fill(~valid, float("-inf"))
                ranks = ranks_of_scores(scores, cand.max(dim=1).values, ties)
            else:
                ranks = target_ranks(scores, items[starts[rows] + t + 1], ties)
            if stats is not None:
                stats.add(scores)
            all_ranks.append(ranks.cpu())
            all_pos.append(np.full(m - first, t + 1, dtype=np.int64))
            all_len.append(chunk_len[first:m])
            bar.update(m - first)
    bar.close()
    ranks = torch.cat(all_ranks).numpy().astype(np.float64) if all_ranks else np.zeros(0)
    metrics = metrics_from_ranks(ranks, cutoffs, ndcg=True)
    if stats is not None:
        metrics.update(stats.metrics())
    return EvalResult(
        metrics=order_metrics(metrics, cutoffs),
        n_events=len(ranks),
        n_sessions=len(order),
        n_unknown=n_unknown,
        ranks=ranks,
        positions=np.concatenate(all_pos) if all_pos else np.zeros(0, dtype=np.int64),
        session_lengths=np.concatenate(all_len) if all_len else np.zeros(0, dtype=np.int64),
        protocol=protocol,
        ties=ties,
        exclude_seen=exclude_seen,
        cutoffs=tuple(cutoffs),
        n_items=n_items,
    )
