"""Session-based nearest neighbours: V-SKNN (Ludewig & Jannach 2018, session-rec's VMContextKNN) and
STAN (Garg et al., SIGIR 2019, "Sequence and Time Aware Neighborhood for Session-based Recommendations").

Both find, for the session so far, the k most similar training sessions among those sharing an item
with it (at most sample_size of them, the most recent by their last click: session-rec's 'recent'
sampling), and score every item by the similarity-weighted neighbours containing it. All rows of a
batch are done at once with sparse products; the per-neighbour details use flat (row, session, item)
arrays. Ties between neighbours are broken towards the more recent session (session-rec leaves them
to Python's set order). Scores are not divided by their maximum (session-rec's `normalize`), which
does not change any ranking.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from gru4rec.evaluation.baselines.base import DECAYS, Baseline, History, TrainSet, last_occurrences, top_per_row
from gru4rec.foundation.errors import UserError

# position weights of the current session's clicks (i: 1-based position, n: session length so far)
POSITION_WEIGHTS = {
    "div": lambda i, n: i / n,
    "same": lambda i, n: np.ones_like(i, dtype=np.float64),
    "quadratic": lambda i, n: (i / n) ** 2,
    "log": lambda i, n: 1.0 / np.log10((n - i) + 1.7),
}
# a neighbour decays by how far back (1 = the last click) the most recent shared click is: DECAYS


class _SessionKNN(Baseline):
    """Neighbour search shared by V-SKNN and STAN."""

    def __init__(self, train: TrainSet, k: int, sample_size: int) -> None:
        super().__init__(train)
        if k < 1:
            raise UserError(f"{self.name}: k must be >= 1, got {k}")
        if sample_size < 0:
            raise UserError(f"{self.name}: sample_size must be >= 0 (0: no sampling), got {sample_size}")
        self.k, self.sample_size = int(k), int(sample_size)
        self.session_items = train.session_item_matrix(binary=True)  # [sessions, items], distinct items
        self.item_sessions = self.session_items.T.tocsr()
        self.session_sizes = np.diff(self.session_items.indptr).astype(np.float64)  # distinct items
        self.session_time = train.session_end_times
        self.n_sessions = train.sessions.n_sessions

    def _neighbours(self, rows, items, weights, m, similarity) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, session, similarity) of each row's k nearest sessions.

        Candidates are the sessions sharing an item with the row (the sparse product's pattern), cut to
        the sample_size most recent; `similarity(row, session, dot)` turns the weighted overlap
        dot = sum of the row's weights over shared items into the similarity.
        """
        w = sp.csr_matrix((weights, (rows, items)), shape=(m, self.n_items))
        dot = (w @ self.item_sessions).tocsr()
        r = np.repeat(np.arange(m), np.diff(dot.indptr))
        s, d = dot.indices, dot.data
        if self.sample_size > 0 and np.diff(dot.indptr).max(initial=0) > self.sample_size:
            keep = top_per_row(r, (-s, -self.session_time[s]), self.sample_size)
            r, s, d = r[keep], s[keep], d[keep]
        sim = similarity(r, s, d)
        keep = top_per_row(r, (-s, -self.session_time[s], -sim), self.k)
        return r[keep], s[keep], sim[keep]


class VSKNN(_SessionKNN):
    """`vsknn`: V-SKNN, session-rec's VMContextKNN with its defaults.

    With the current session's clicks c_1..c_n (an item clicked twice takes its later position p):
        w(item) = weighting(p, n)                       div: p / n (later clicks count more)
        sim(s)  = sum_{i in cur & s} w(i) / (sqrt(sum_{i in cur} w(i)^2) * sqrt(|s|))   (cosine)
                  or sum_{i in cur & s} w(i) / |cur|                                      (vec)
        score(j) = sum over the k nearest s containing j of sim(s) * weighting_score(step_s)
    step_s = 1 + number of clicks after the most recent click whose item is in s (div_score: 1/step).
    Defaults: k 100, sample_size 500, sampling recent, similarity cosine, weighting div,
    weighting_score div, idf_weighting off, items of the current session not excluded (remind).
    """

    name = "vsknn"

    def __init__(
        self,
        train: TrainSet,
        k: int = 100,
        sample_size: int = 500,
        similarity: str = "cosine",
        weighting: str = "div",
        weighting_score: str = "div",
    ) -> None:
        super().__init__(train, k, sample_size)
        if similarity not in ("cosine", "vec"):
            raise UserError(f"vsknn: similarity {similarity!r} is not one of cosine, vec")
        if weighting not in POSITION_WEIGHTS:
            raise UserError(f"vsknn: weighting {weighting!r} is not one of {', '.join(POSITION_WEIGHTS)}")
        if weighting_score not in DECAYS:
            raise UserError(f"vsknn: weighting_score {weighting_score!r} is not one of {', '.join(DECAYS)}")
        self.similarity, self.weighting, self.weighting_score = similarity, weighting, weighting_score

    def params(self) -> dict[str, Any]:
        return {
            "k": self.k, "sample_size": self.sample_size, "sampling": "recent", "similarity": self.similarity,
            "weighting": self.weighting, "weighting_score": self.weighting_score,
        }

    def score_history(self, history: History) -> sp.csr_matrix:
        m, n = history.items.shape
        rows, items, last_pos = last_occurrences(history.items, self.n_items)
        weights = POSITION_WEIGHTS[self.weighting](last_pos.astype(np.float64), float(n))
        if self.similarity == "cosine":
            row_norm = np.sqrt(np.bincount(rows, weights * weights, minlength=m))

            def similarity(r, s, d):
                return d / (row_norm[r] * np.sqrt(self.session_sizes[s]))
        else:
            distinct = np.bincount(rows, minlength=m).astype(np.float64)

            def similarity(r, s, d):
                return d / distinct[r]

        r, s, sim = self._neighbours(rows, items, weights, m, similarity)
        # most recent click of the row whose item is in neighbour s: expand (pair, item of s)
        sizes = np.diff(self.session_items.indptr)[s]
        pair = np.repeat(np.arange(len(s)), sizes)
        within = np.arange(len(pair)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        nb_items = self.session_items.indices[self.session_items.indptr[s][pair] + within]
        row_keys = rows * self.n_items + items  # sorted
        query = r[pair] * self.n_items + nb_items
        at = np.minimum(np.searchsorted(row_keys, query), len(row_keys) - 1)
        shared_pos = np.where(row_keys[at] == query, last_pos[at], 0)
        latest = np.zeros(len(s), dtype=np.int64)
        np.maximum.at(latest, pair, shared_pos)
        decay = DECAYS[self.weighting_score]((n - latest + 1).astype(np.float64))
        weight = sp.csr_matrix((sim * decay, (r, s)), shape=(m, self.n_sessions))
        return weight @ self.session_items


class STAN(_SessionKNN):
    """`stan`: Sequence and Time Aware Neighborhood (Garg, Gupta, Stan, Kumar & Batra, SIGIR 2019),
    as implemented in session-rec (algorithms/knn/stan.py).

    With the current session's clicks c_1..c_n (an item clicked twice takes its later position p) at
    time t_now, a neighbour s (last click at t_s):
        w(i)   = exp((p(i) - n) / lambda_spw)                                  (recent clicks weigh more)
        sim(s) = sum_{i in cur & s} w(i) / (sqrt(sum_{i in cur} w(i)^2) * sqrt(|s|))
                 * exp(-(t_now - t_s) / lambda_snh)                             (recent sessions weigh more)
        score(j) = sum over the k nearest s containing j of sim(s) * exp(-|q_s(j) - q_s*| / lambda_inh)
    q_s(j) = position of j's last click in s, q_s* = position of the last click in s on any item of the
    current session (items near the shared one weigh more). lambda_snh is in days.
    Defaults (session-rec's STAN and Garg et al.): k 500, sample_size 5000, lambda_spw 1.02,
    lambda_snh 5 days, lambda_inh 2.05, sampling recent, remind on.
    """

    name = "stan"
    needs_times = True

    def __init__(
        self,
        train: TrainSet,
        k: int = 500,
        sample_size: int = 5000,
        lambda_spw: float = 1.02,
        lambda_snh: float = 5.0,
        lambda_inh: float = 2.05,
    ) -> None:
        super().__init__(train, k, sample_size)
        for name, value in (("lambda_spw", lambda_spw), ("lambda_snh", lambda_snh), ("lambda_inh", lambda_inh)):
            if not value > 0:
                raise UserError(f"stan: {name} must be > 0, got {value}")
        self.lambda_spw, self.lambda_snh, self.lambda_inh = float(lambda_spw), float(lambda_snh), float(lambda_inh)
        s = train.sessions
        self.event_items = s.items
        self.event_offsets = s.offsets
        # a click is a candidate position q_s(j) only if it is its item's last click in the session
        key = train.session_of_event * train.n_items + s.items
        _, first_rev = np.unique(key[::-1], return_index=True)
        self.is_last_click = np.zeros(s.n_events, dtype=bool)
        self.is_last_click[s.n_events - 1 - first_rev] = True

    def params(self) -> dict[str, Any]:
        return {
            "k": self.k, "sample_size": self.sample_size, "sampling": "recent", "lambda_spw": self.lambda_spw,
            "lambda_snh": self.lambda_snh, "lambda_inh": self.lambda_inh,
        }

    def score_history(self, history: History) -> sp.csr_matrix:
        m, n = history.items.shape
        rows, items, last_pos = last_occurrences(history.items, self.n_items)
        weights = np.exp((last_pos - n) / self.lambda_spw)
        row_norm = np.sqrt(np.bincount(rows, weights * weights, minlength=m))
        t_now = history.times[:, -1]
        snh_seconds = self.lambda_snh * 24 * 3600

        def similarity(r, s, d):
            return d / (row_norm[r] * np.sqrt(self.session_sizes[s])) * np.exp(
                -(t_now[r] - self.session_time[s]) / snh_seconds
            )

        r, s, sim = self._neighbours(rows, items, weights, m, similarity)
        # expand every click of every neighbour: (pair, position q in s, item)
        sizes = np.diff(self.event_offsets)[s]
        pair = np.repeat(np.arange(len(s)), sizes)
        q = np.arange(len(pair)) - np.repeat(np.cumsum(sizes) - sizes, sizes)  # 0-based
        event = self.event_offsets[s][pair] + q
        nb_items = self.event_items[event]
        row_keys = rows * self.n_items + items
        query = r[pair] * self.n_items + nb_items
        at = np.minimum(np.searchsorted(row_keys, query), len(row_keys) - 1)
        shared = row_keys[at] == query
        q_star = np.full(len(s), -1, dtype=np.int64)
        np.maximum.at(q_star, pair[shared], q[shared])
        last = self.is_last_click[event]
        contrib = sim[pair[last]] * np.exp(-np.abs(q[last] - q_star[pair[last]]) / self.lambda_inh)
        return sp.csr_matrix((contrib, (r[pair[last]], nb_items[last])), shape=(m, self.n_items))
