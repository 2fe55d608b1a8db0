"""`itemknn`: item-to-item nearest neighbours of the last click (Hidasi et al. 2016's item-kNN baseline,
session-rec's ItemKNN with its defaults n_sims=100, lmbd=20, alpha=0.5)."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from gru4rec.evaluation.baselines.base import Baseline, History, TrainSet, prune_rows
from gru4rec.foundation.errors import UserError


class ItemKNN(Baseline):
    """Score of item j after a click on item i: sim(i, j), the regularised cosine of co-occurrence.

        sim(i, j) = |sessions with i and j| / ((supp_i + lmbd)^alpha * (supp_j + lmbd)^(1 - alpha)),  i != j

    supp_i = number of training sessions containing i; alpha = 0.5 gives the cosine of the binary
    session vectors (shrunk by lmbd against rare items); only the n_sims most similar items of each
    item keep a non-zero score (ties: lower item index first). This is the formula of session-rec's
    ItemKNN docstring; its code counts events instead of sessions (repeat clicks weigh more), which
    we do not copy.
    """

    name = "itemknn"

    def __init__(self, train: TrainSet, n_sims: int = 100, lmbd: float = 20.0, alpha: float = 0.5) -> None:
        super().__init__(train)
        if n_sims < 1:
            raise UserError(f"itemknn: n_sims must be >= 1, got {n_sims}")
        if lmbd < 0 or not 0.0 <= alpha <= 1.0:
            raise UserError(f"itemknn: need lmbd >= 0 and alpha in [0, 1], got lmbd={lmbd}, alpha={alpha}")
        self.n_sims, self.lmbd, self.alpha = int(n_sims), float(lmbd), float(alpha)
        binary = train.session_item_matrix(binary=True)
        cooc = (binary.T @ binary).tocsr()
        cooc.setdiag(0.0)
        cooc.eliminate_zeros()
        supp = np.asarray(binary.sum(axis=0)).ravel() + self.lmbd
        rows = np.repeat(np.arange(cooc.shape[0]), np.diff(cooc.indptr))
        norm = supp[rows] ** self.alpha * supp[cooc.indices] ** (1.0 - self.alpha)
        cooc.data = cooc.data / np.where(norm > 0, norm, 1.0)
        self.sims = prune_rows(cooc, self.n_sims)

    def params(self) -> dict[str, Any]:
        return {"n_sims": self.n_sims, "lmbd": self.lmbd, "alpha": self.alpha}

    def score_history(self, history: History) -> sp.csr_matrix:
        return self.sims[history.items[:, -1]]
