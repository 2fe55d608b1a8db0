"""The session-parallel schedule of an epoch as fixed-shape arrays, computed once and kept on the device.

gru4rec.training.batching yields the reference's mini-batches one by one, each of its natural size:
B rows while sessions last, fewer in the tail. A step that must keep one shape (a CUDA graph replays
the same kernels on the same buffers) needs the whole epoch laid out instead: slot j of step t feeds
the event at positions[t, j] when valid[t, j], and reset[t, j] says that the slot starts a new
session there (its state must be zeroed first). Finished slots in the tail stay in place, masked,
rather than being dropped, so rows never move between slots.

The schedule is the same every epoch (sessions are never shuffled), so a Trainer builds it once. It
is built from the sessions' lengths alone with one numpy pass per refill point (no Python object per
event), and costs about 10 bytes per event: int32 positions (int64 beyond 2^31 events) and two masks.
Tests hold it to session_parallel_steps step by step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from gru4rec.data.sessions import Sessions


@dataclass(frozen=True)
class EpochSchedule:
    positions: Tensor  # [T, B] int: index into Sessions.items of each slot's input (0 when idle)
    valid: Tensor  # [T, B] bool: the slot feeds an event at this step
    reset: Tensor  # [T, B] bool: the slot starts a new session at this step
    rows: np.ndarray  # [T] valid slots per step, on the host

    @property
    def n_steps(self) -> int:
        return len(self.rows)

    @property
    def n_slots(self) -> int:
        return self.positions.shape[1]

    def to(self, device: torch.device) -> EpochSchedule:
        return EpochSchedule(self.positions.to(device), self.valid.to(device), self.reset.to(device), self.rows)

    @classmethod
    def build(cls, sessions: Sessions, batch_size: int, min_rows: int = 1) -> EpochSchedule:
        """The epoch of session_parallel_steps(sessions, batch_size), leaving out (as the trainer does) its
        final steps with fewer than `min_rows` rows."""
        slot, session, start, n_steps = _assignments(sessions, batch_size)
        n_slots = min(batch_size, sessions.n_sessions)
        lengths = sessions.lengths[session] - 1  # steps each assignment takes (a 1-event session: none)
        dtype = np.int32 if sessions.n_events < 2**31 - 1 else np.int64
        positions = np.zeros((n_steps, n_slots), dtype=dtype)
        valid = np.zeros((n_steps, n_slots), dtype=bool)
        reset = np.zeros((n_steps, n_slots), dtype=bool)
        which = np.repeat(np.arange(len(slot)), lengths)
        k = np.arange(len(which)) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # step within the session
        t, j = start[which] + k, slot[which]
        positions[t, j] = sessions.offsets[session[which]] + k
        valid[t, j] = True
        taking = lengths > 0
        reset[start[taking], slot[taking]] = True
        rows = valid.sum(axis=1)
        kept = int(np.count_nonzero(rows >= min_rows))  # only the tail can be short, and it only shrinks
        return cls(torch.from_numpy(positions[:kept]), torch.from_numpy(valid[:kept]),
                   torch.from_numpy(reset[:kept]), rows[:kept])


def _assignments(sessions: Sessions, batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Which slot runs which session from which step: (slot, session, start) per session, and the step count.

    The same refill rule as batching.session_parallel_steps: slots that finish together take the next
    sessions in slot order; a one-event session is finished at once and its slot refilled again.
    """
    offsets, n_sessions = sessions.offsets, sessions.n_sessions
    if n_sessions == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, 0
    slots = min(batch_size, n_sessions)
    live = np.arange(slots)  # stable slot id of each row still running
    pos, end = offsets[:slots].copy(), offsets[1 : slots + 1].copy()
    parts = [(live.copy(), np.arange(slots), np.zeros(slots, dtype=np.int64))]
    next_session, t = slots, 0
    while len(pos):
        n = max(int((end - pos).min()) - 1, 0)
        t, pos = t + n, pos + n
        finished = np.flatnonzero(end - pos <= 1)
        n_refill = min(len(finished), n_sessions - next_session)
        refill, drop = finished[:n_refill], finished[n_refill:]
        new = np.arange(next_session, next_session + n_refill)
        next_session += n_refill
        pos[refill], end[refill] = offsets[new], offsets[new + 1]
        parts.append((live[refill], new, np.full(n_refill, t, dtype=np.int64)))
        if len(drop):
            rows = np.setdiff1d(np.arange(len(pos)), drop)
            pos, end, live = pos[rows], end[rows], live[rows]
    slot, session, start = (np.concatenate(p) for p in zip(*parts))
    return slot, session, start, t
