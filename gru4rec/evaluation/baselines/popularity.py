"""Popularity baselines: the floor any session model must clear."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from gru4rec.evaluation.baselines.base import Baseline, History, TrainSet


class Pop(Baseline):
    """`pop`: every session gets the same list, items by training event count (session-rec's Pop)."""

    name = "pop"

    def score(self, state: History) -> Tensor:
        # the same row for every session: a broadcast view (evaluate never writes into scores)
        return torch.from_numpy(self.item_counts.astype(np.float32)).expand(len(state.items), -1)


class SessionPop(Baseline):
    """`spop`: items of the current session by how often they were clicked in it, then by popularity.

    score(i) = count of i in the session so far + supp_i / (supp_i + 1), supp_i = training events of i
    (session-rec's SessionPop, Ludewig & Jannach 2018). The popularity term is < 1, so it only orders
    items with the same in-session count; unlike session-rec (top_n=100) it covers the whole catalogue.
    """

    name = "spop"

    def __init__(self, train: TrainSet) -> None:
        super().__init__(train)
        self.base = self.item_counts / (self.item_counts + 1.0)

    def params(self) -> dict[str, Any]:
        return {}

    def score_history(self, history: History) -> np.ndarray:
        m = len(history.items)
        scores = np.tile(self.base, (m, 1))
        np.add.at(scores, (np.repeat(np.arange(m), history.items.shape[1]), history.items.ravel()), 1.0)
        return scores
