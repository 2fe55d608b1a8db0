"""Session-parallel mini-batches, exactly as the reference builds them.

B slots each hold one session (oldest first, never shuffled). Every step feeds each slot's current
item and predicts its next one. When a slot's session is exhausted the next unused session takes the
slot and that slot's hidden state (every layer) must be zeroed; once no session is left, finished
slots are dropped and the batch shrinks, while the sessions still in flight run to their end. Every
event that has a successor is an input exactly once per epoch. There is no BPTT: the caller detaches
the state every step.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from gru4rec.data.sessions import Sessions


@dataclass(frozen=True)
class Step:
    """One mini-batch. Before feeding it: keep rows `keep` of the state, then zero rows `reset`.

    positions[i] indexes Sessions.items: the input is items[positions], the target items[positions + 1].
    """

    positions: np.ndarray
    keep: np.ndarray | None  # rows of the previous step's state that go on (None: all of them)
    reset: np.ndarray | None  # rows (after `keep`) that start a new session (None: none)


def session_parallel_steps(sessions: Sessions, batch_size: int) -> Iterator[Step]:
    offsets = sessions.offsets
    n_sessions = sessions.n_sessions
    if n_sessions == 0:
        return
    slots = min(batch_size, n_sessions)
    pos = offsets[:slots].copy()  # current input position of each slot
    end = offsets[1 : slots + 1].copy()  # one past the last event of the slot's session
    next_session = slots
    origin = np.arange(slots)  # each slot's row in the previously fed step
    fresh = np.zeros(slots, dtype=bool)  # slot took a new session since the previous step
    fed_rows = slots
    while len(pos):
        # A session of length 1 has no (input, target) pair: its slot is finished at once.
        n_steps = int((end - pos).min()) - 1
        for i in range(n_steps):
            keep = None if len(origin) == fed_rows else origin
            reset = np.flatnonzero(fresh) if fresh.any() else None
            yield Step(pos + i, keep, reset)
            fed_rows = len(pos)
            origin = np.arange(fed_rows)
            fresh = np.zeros(fed_rows, dtype=bool)
        pos = pos + max(n_steps, 0)
        finished = np.flatnonzero(end - pos <= 1)
        n_refill = min(len(finished), n_sessions - next_session)
        refill, drop = finished[:n_refill], finished[n_refill:]
        new_sessions = np.arange(next_session, next_session + n_refill)
        next_session += n_refill
        pos[refill] = offsets[new_sessions]
        end[refill] = offsets[new_sessions + 1]
        fresh[refill] = True
        if len(drop):
            rows = np.setdiff1d(np.arange(len(pos)), drop)
            pos, end, origin, fresh = pos[rows], end[rows], origin[rows], fresh[rows]


def count_steps(sessions: Sessions, batch_size: int, min_rows: int = 1) -> int:
    """Mini-batches of at least `min_rows` rows in one epoch (the schedule is the same every epoch)."""
    return sum(1 for step in session_parallel_steps(sessions, batch_size) if len(step.positions) >= min_rows)
