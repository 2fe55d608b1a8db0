"""Next-item evaluation with full ranking, as in the reference protocol.

Each test session is replayed event by event from a zero state; after each event every training
item is ranked for the next event, the only relevant item. Test events whose item the model does
not know are dropped beforehand (data.load_eval_data) and the session is stitched together.

Sessions are batched by length (longest first) so a batch shrinks by dropping its last rows as
sessions end; every batch starts from a fresh zero state, so no state can leak between sessions.
Any recommender that implements `SessionScorer` (the GRU, the baselines) goes through this code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from gru4rec.data import Sessions
from gru4rec.errors import UserError
from gru4rec.logs import progress
from gru4rec.model import GRU4Rec

TIE_MODES = ("standard", "conservative", "median")
DEFAULT_CUTOFFS = (1, 5, 10, 20)


class SessionScorer(Protocol):
    """Scores every item as the next click of a batch of sessions, one click at a time."""

    n_items: int

    def begin(self, n_sessions: int) -> Any:
        """State of `n_sessions` empty sessions."""

    def step(self, state: Any, items: Tensor) -> Any:
        """Feed one click to each of the first len(items) sessions; the other rows are dropped."""

    def score(self, state: Any) -> Tensor:
        """Scores [rows, n_items]; higher is better."""


class ModelScorer:
    """SessionScorer over a GRU4Rec model (hidden state per row)."""

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


def target_ranks(scores: Tensor, targets: Tensor, ties: str = "conservative") -> Tensor:
    """Rank of each row's target among all columns (1 = best), by tie mode.

    standard: 1 + #(scores > target); conservative: #(scores >= target), the target included;
    median: halfway between. A non-finite target score gets the worst rank.
    """
    target = scores.gather(1, targets.unsqueeze(1))
    greater = (scores > target).sum(dim=1)
    if ties == "standard":
        ranks = greater.float() + 1
    elif ties == "conservative":
        ranks = (scores >= target).sum(dim=1).float()
    elif ties == "median":
        equal = (scores == target).sum(dim=1)
        ranks = greater.float() + 1 + 0.5 * (equal.float() - 1)
    else:
        raise UserError(f"unknown tie mode {ties!r}: use one of {', '.join(TIE_MODES)}")
    bad = ~torch.isfinite(target.squeeze(1))
    return torch.where(bad, torch.full_like(ranks, scores.shape[1]), ranks)


def metrics_from_ranks(ranks: np.ndarray, cutoffs: Sequence[int]) -> dict[str, float]:
    """Recall@k (rank <= k) and MRR@k (1/rank when rank <= k, else 0), averaged over events."""
    out: dict[str, float] = {}
    for k in cutoffs:
        hit = ranks <= k
        out[f"recall@{k}"] = float(hit.mean()) if len(ranks) else 0.0
        out[f"mrr@{k}"] = float(np.where(hit, 1.0 / ranks, 0.0).mean()) if len(ranks) else 0.0
    return out


@dataclass
class EvalResult:
    metrics: dict[str, float]
    n_events: int  # predictions made (events with a next event)
    n_sessions: int  # sessions with at least one prediction
    n_unknown: int = 0  # test events dropped because the model does not know their item
    ranks: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    positions: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64), repr=False)
    session_lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64), repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metrics": self.metrics,
            "n_events": self.n_events,
            "n_sessions": self.n_sessions,
            "n_unknown_dropped": self.n_unknown,
        }


def check_cutoffs(cutoffs: Sequence[int], n_items: int) -> list[int]:
    cutoffs = sorted(set(int(k) for k in cutoffs))
    if not cutoffs or cutoffs[0] < 1:
        raise UserError(f"cut-offs must be positive integers, got {list(cutoffs)}")
    if cutoffs[-1] > n_items:
        raise UserError(f"cut-off {cutoffs[-1]} is larger than the catalogue ({n_items} items)")
    return cutoffs


@torch.inference_mode()
def evaluate(
    scorer: SessionScorer,
    sessions: Sessions,
    cutoffs: Sequence[int] = DEFAULT_CUTOFFS,
    ties: str = "conservative",
    batch_size: int = 512,
    device: str | torch.device = "cpu",
    n_unknown: int = 0,
) -> EvalResult:
    if ties not in TIE_MODES:
        raise UserError(f"unknown tie mode {ties!r}: use one of {', '.join(TIE_MODES)}")
    cutoffs = check_cutoffs(cutoffs, scorer.n_items)
    lengths = sessions.lengths
    order = np.argsort(-lengths, kind="stable")
    order = order[lengths[order] >= 2]
    items = torch.from_numpy(sessions.items).to(device)
    all_ranks, all_pos, all_len = [], [], []
    n_predictions = int((lengths[order] - 1).sum())
    bar = progress(total=n_predictions, desc="evaluate", unit="ev")
    for lo in range(0, len(order), batch_size):
        chunk = order[lo : lo + batch_size]
        chunk_len = lengths[chunk]
        starts = torch.from_numpy(sessions.offsets[chunk]).to(device)
        state = scorer.begin(len(chunk))
        for t in range(int(chunk_len[0]) - 1):
            m = int((chunk_len > t + 1).sum())  # sessions that still have a next event
            state = scorer.step(state, items[starts[:m] + t])
            ranks = target_ranks(scorer.score(state), items[starts[:m] + t + 1], ties)
            all_ranks.append(ranks.cpu())
            all_pos.append(np.full(m, t + 1, dtype=np.int64))
            all_len.append(chunk_len[:m])
            bar.update(m)
    bar.close()
    ranks = torch.cat(all_ranks).numpy().astype(np.float64) if all_ranks else np.zeros(0)
    return EvalResult(
        metrics=metrics_from_ranks(ranks, cutoffs),
        n_events=len(ranks),
        n_sessions=len(order),
        n_unknown=n_unknown,
        ranks=ranks,
        positions=np.concatenate(all_pos) if all_pos else np.zeros(0, dtype=np.int64),
        session_lengths=np.concatenate(all_len) if all_len else np.zeros(0, dtype=np.int64),
    )
