"""Small synthetic session sets for the training-step tests (CPU, CUDA, native kernels, self-check)."""

from __future__ import annotations

import numpy as np

from gru4rec.data.sessions import Sessions


def sessions_of(lists: list[list[int]]) -> Sessions:
    """Sessions holding exactly these item lists, named s0, s1, ..."""
    lengths = [len(x) for x in lists]
    return Sessions(np.concatenate([np.asarray(x, dtype=np.int64) for x in lists]),
                    np.r_[0, np.cumsum(lengths)].astype(np.int64), np.array([f"s{i}" for i in range(len(lists))], dtype=object))


def cyclic(n_items: int, n_sessions: int, seed: int, min_clicks: int = 1) -> Sessions:
    """Sessions of min_clicks to 8 clicks that click i + 1 after i (mod n_items): a pattern a step can learn."""
    rng = np.random.default_rng(seed)
    lists = []
    for _ in range(n_sessions):
        start, n = int(rng.integers(n_items)), int(rng.integers(min_clicks, 9))
        lists.append([(start + k) % n_items for k in range(n)])
    return sessions_of(lists)
