"""What every baseline shares: the training set it is fitted on and the per-row click history.

Baselines are fitted once from the same training file GRU4Rec trains on (same item map, so the
same catalogue is ranked) and are evaluated through gru4rec.evaluation.protocol like the GRU: they implement
SessionScorer with a state that is simply the clicks (and click times) of each row so far.
Scores are computed with numpy/scipy.sparse on the CPU for a whole batch of sessions at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from gru4rec.data.sessions import ItemMap, Sessions, load_training_data


@dataclass(frozen=True)
class TrainSet:
    """A training file as index arrays: sessions (oldest first), the item map, counts and event times."""

    sessions: Sessions
    item_map: ItemMap
    item_counts: np.ndarray  # training events per item
    times: np.ndarray  # Unix time of every event, aligned with sessions.items

    @property
    def n_items(self) -> int:
        return len(self.item_map)

    @property
    def session_of_event(self) -> np.ndarray:
        return np.repeat(np.arange(self.sessions.n_sessions), self.sessions.lengths)

    @property
    def session_end_times(self) -> np.ndarray:
        """Time of each session's last event (session-rec's `session_time`)."""
        return np.maximum.reduceat(self.times, self.sessions.offsets[:-1])

    def session_item_matrix(self, binary: bool = True) -> sp.csr_matrix:
        """[sessions, items]: 1 where the item occurs in the session (or its count when binary=False)."""
        s = self.sessions
        mat = sp.csr_matrix(
            (np.ones(s.n_events), (self.session_of_event, s.items)), shape=(s.n_sessions, self.n_items)
        )
        mat.sum_duplicates()
        if binary:
            mat.data[:] = 1.0
        return mat


def load_train_set(path: str | os.PathLike[str]) -> TrainSet:
    """Read a training file exactly as `gru4rec train` does (same item order and counts)."""
    sessions, item_map, counts, events = load_training_data(path)
    return TrainSet(sessions, item_map, counts, events.time)


@dataclass
class History:
    """Clicks so far of each row: items [rows, t] and their times [rows, t] (all rows advance together)."""

    items: np.ndarray
    times: np.ndarray


class Baseline:
    """SessionScorer base: keeps the click history; subclasses turn it into scores [rows, n_items]."""

    name = "baseline"
    needs_times = False

    def __init__(self, train: TrainSet) -> None:
        self.n_items = train.n_items
        self.item_counts = np.asarray(train.item_counts, dtype=np.float64)

    def params(self) -> dict[str, Any]:
        """The hyper-parameters in effect (for reports)."""
        return {}

    def begin(self, n_sessions: int) -> History:
        return History(np.zeros((n_sessions, 0), dtype=np.int64), np.zeros((n_sessions, 0)))

    def step(self, state: History, items: Tensor, times: np.ndarray | None = None) -> History:
        n = len(items)
        new_items = items.detach().cpu().numpy().astype(np.int64)[:, None]
        new_times = np.zeros((n, 1)) if times is None else np.asarray(times, dtype=np.float64)[:, None]
        return History(
            np.concatenate([state.items[:n], new_items], axis=1),
            np.concatenate([state.times[:n], new_times], axis=1),
        )

    def score(self, state: History) -> Tensor:
        scores = self.score_history(state)
        if sp.issparse(scores):
            scores = scores.toarray()
        return torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32))

    def score_history(self, history: History) -> np.ndarray | sp.spmatrix:
        raise NotImplementedError


def last_occurrences(history: np.ndarray, n_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct (row, item) pairs of a history [rows, L] with the 1-based position of the item's last click.

    Returned sorted by row, then item, so `row * n_items + item` is sorted (for searchsorted look-ups).
    """
    m, length = history.shape
    keys = (np.arange(m)[:, None] * n_items + history).ravel()
    uniq, first_in_reversed = np.unique(keys[::-1], return_index=True)
    last_flat = len(keys) - 1 - first_in_reversed
    return uniq // n_items, uniq % n_items, last_flat % length + 1


def rank_within_groups(groups: np.ndarray) -> np.ndarray:
    """0-based rank of each element within its run of equal values (`groups` must be sorted)."""
    first = np.searchsorted(groups, groups, side="left")
    return np.arange(len(groups)) - first


def top_per_row(rows: np.ndarray, keys: tuple[np.ndarray, ...], limit: int) -> np.ndarray:
    """Indices of at most `limit` entries per row, best first by `keys` (most significant last, ascending).

    Like np.lexsort: pass negated values to prefer large ones. The result is ordered by row.
    """
    order = np.lexsort((*keys, rows))
    keep = rank_within_groups(rows[order]) < limit
    return order[keep]


def prune_rows(mat: sp.csr_matrix, limit: int) -> sp.csr_matrix:
    """Keep the `limit` largest entries of each row (ties: lower column first); the rest become 0."""
    mat = mat.tocsr()
    mat.sum_duplicates()
    mat.eliminate_zeros()
    rows = np.repeat(np.arange(mat.shape[0]), np.diff(mat.indptr))
    keep = top_per_row(rows, (mat.indices, -mat.data), limit)
    out = sp.csr_matrix((mat.data[keep], (rows[keep], mat.indices[keep])), shape=mat.shape)
    out.sort_indices()
    return out


# Decay of a weight by a distance in clicks (1 = adjacent), shared by the sequential rules and the
# session-kNN score weighting (session-rec's "div", "same", "linear", "log", "quadratic").
DECAYS = {
    "div": lambda i: 1.0 / i,
    "same": lambda i: np.ones_like(i, dtype=np.float64),
    "linear": lambda i: np.where(i <= 100, 1.0 - 0.1 * i, 0.0),
    "log": lambda i: 1.0 / np.log10(i + 1.7),
    "quadratic": lambda i: 1.0 / (i * i),
}
