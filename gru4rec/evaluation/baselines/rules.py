"""`sr`: sequential rules (Kamehkhosh, Jannach & Ludewig 2017; session-rec's SequentialRules)."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from gru4rec.evaluation.baselines.base import DECAYS, Baseline, History, TrainSet, rank_within_groups
from gru4rec.foundation.errors import UserError



class SequentialRules(Baseline):
    """Rule a -> b gets weight w(i) each time b is clicked i <= steps clicks after a in a training session.

        rule(a, b) = sum over training clicks of b, and over i = 1..steps with a = the click i before b,
                     of w(i);  w = div: 1/i (defaults: steps 10, weighting div, pruning 20)

    Each item keeps only its `pruning` strongest rules (ties: the rule created first in the training
    pass, as session-rec's Counter.most_common); a pruning in (0, 1) drops that share instead. The score
    of b is rule(last click, b); items without a rule score 0.
    """

    name = "sr"

    def __init__(self, train: TrainSet, steps: int = 10, weighting: str = "div", pruning: float = 20) -> None:
        super().__init__(train)
        if steps < 1:
            raise UserError(f"sr: steps must be >= 1, got {steps}")
        if weighting not in DECAYS:
            raise UserError(f"sr: weighting {weighting!r} is not one of {', '.join(DECAYS)}")
        if pruning < 0:
            raise UserError(f"sr: pruning must be >= 0, got {pruning}")
        self.steps, self.weighting, self.pruning = int(steps), weighting, pruning
        s = train.sessions
        n = train.n_items
        pos_in_session = np.arange(s.n_events) - np.repeat(s.offsets[:-1], s.lengths)
        prev_parts, next_parts, weight_parts, order_parts = [], [], [], []
        for i in range(1, self.steps + 1):
            later = np.flatnonzero(pos_in_session >= i)  # clicks with a click i steps before them
            prev_parts.append(s.items[later - i])
            next_parts.append(s.items[later])
            weight_parts.append(np.full(len(later), DECAYS[weighting](np.float64(i))))
            order_parts.append(later * self.steps + (i - 1))  # session-rec's creation order
        key = np.concatenate(prev_parts) * n + np.concatenate(next_parts)
        weight = np.concatenate(weight_parts)
        created = np.concatenate(order_parts)
        order = np.lexsort((created, key))
        key, weight, created = key[order], weight[order], created[order]
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        key = key[starts]
        total = np.add.reduceat(weight, starts) if len(weight) else weight
        created = created[starts]  # first creation of each rule
        prev = key // n
        if self.pruning > 0:
            order = np.lexsort((created, -total, prev))
            rank = rank_within_groups(prev[order])
            if self.pruning >= 1:
                keep_n = np.full(n, int(self.pruning))
            else:
                rules_per_item = np.bincount(prev, minlength=n)
                keep_n = rules_per_item - (rules_per_item * self.pruning).astype(np.int64)
            order = order[rank < keep_n[prev[order]]]
            key, total, prev = key[order], total[order], prev[order]
        self.rules = sp.csr_matrix((total, (prev, key % n)), shape=(n, n))

    def params(self) -> dict[str, Any]:
        return {"steps": self.steps, "weighting": self.weighting, "pruning": self.pruning}

    def score_history(self, history: History) -> sp.csr_matrix:
        return self.rules[history.items[:, -1]]
