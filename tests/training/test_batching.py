"""Session-parallel mini-batches (reference section 2) and the section-5 mistakes they must rule out:
hidden state reset at the wrong steps, an epoch that drops the tails of sessions in flight, and
sessions consumed out of time order."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gru4rec.training.batching import count_steps, session_parallel_steps
from gru4rec.data.session_files import SessionColumns
from gru4rec.data.sessions import Sessions, order_events


def make_sessions(lengths: list[int]) -> Sessions:
    """Sessions back to back; the item at position p is p, so an item tells its position."""
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    items = np.arange(offsets[-1], dtype=np.int64)
    return Sessions(items, offsets, np.array([f"s{i}" for i in range(len(lengths))], dtype=object))


def as_tuples(sessions: Sessions, batch_size: int):
    out = []
    for step in session_parallel_steps(sessions, batch_size):
        keep = None if step.keep is None else step.keep.tolist()
        reset = None if step.reset is None else step.reset.tolist()
        out.append((step.positions.tolist(), keep, reset))
    return out


# Sessions of lengths [3, 2, 4, 2, 5] occupy positions
#   s0: 0 1 2 | s1: 3 4 | s2: 5 6 7 8 | s3: 9 10 | s4: 11 12 13 14 15
# Inputs are every position but the last of each session: 16 - 5 = 11 of them.

EXAMPLE = [3, 2, 4, 2, 5]

# batch 2, worked out by hand:
#  step 1: slots (s0, s1) feed 0, 3                      no reset (first step, state is zero anyway)
#  step 2: s1 is done after 1 input; s2 takes slot 1 -> feed 1, 5, reset row 1
#  step 3: s0 is done after 2 inputs; s3 takes slot 0 -> feed 9, 6, reset row 0
#  step 4: s3 is done; s4 takes slot 0             -> feed 11, 7, reset row 0
#  step 5: s2 is done, no session left: row 1 dropped, s4 stays in flight -> keep [0], feed 12
#  steps 6, 7: s4 runs to its end                     -> feed 13, then 14
EXPECTED_B2 = [
    ([0, 3], None, None),
    ([1, 5], None, [1]),
    ([9, 6], None, [0]),
    ([11, 7], None, [0]),
    ([12], [0], None),
    ([13], None, None),
    ([14], None, None),
]

# batch 3, worked out by hand:
#  step 1: slots (s0, s1, s2) feed 0, 3, 5
#  step 2: s1 done; s3 takes slot 1       -> feed 1, 9, 6, reset row 1
#  step 3: s0 and s3 done; s4 takes slot 0, slot 1 has no session left and is dropped:
#          rows of the previous state kept: [0, 2]; row 0 (s4) is zeroed  -> feed 11, 7
#  step 4: s2 done and dropped (keep [0]); s4 goes on                      -> feed 12
#  steps 5, 6: s4 to its end                                               -> feed 13, 14
EXPECTED_B3 = [
    ([0, 3, 5], None, None),
    ([1, 9, 6], None, [1]),
    ([11, 7], [0, 2], [0]),
    ([12], [0], None),
    ([13], None, None),
    ([14], None, None),
]


def test_hand_checked_example_batch_2():
    assert as_tuples(make_sessions(EXAMPLE), 2) == EXPECTED_B2


def test_hand_checked_example_batch_3():
    assert as_tuples(make_sessions(EXAMPLE), 3) == EXPECTED_B3


def test_hand_checked_example_large_batch():
    # batch larger than the number of sessions: 5 slots, each session runs to its end, the batch shrinks
    steps = as_tuples(make_sessions(EXAMPLE), 8)
    assert steps == [
        ([0, 3, 5, 9, 11], None, None),
        ([1, 6, 12], [0, 2, 4], None),
        ([7, 13], [1, 2], None),
        ([14], [1], None),
    ]


def test_tail_of_sessions_in_flight_is_not_dropped():
    # A long session in flight when the queue runs out must still run to its very end.
    sessions = make_sessions([2, 2, 2, 10])
    steps = as_tuples(sessions, 2)
    fed = [p for positions, _, _ in steps for p in positions]
    assert fed[-8:] == [7, 8, 9, 10, 11, 12, 13, 14]  # last session: positions 6..15, inputs 6..14
    assert sorted(fed) == sorted(inputs_of(sessions))


def test_count_steps_matches_generator():
    sessions = make_sessions(EXAMPLE)
    assert count_steps(sessions, 2) == len(EXPECTED_B2)
    assert count_steps(sessions, 3) == len(EXPECTED_B3)


def test_no_sessions_no_steps():
    empty = Sessions(np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64), np.array([], dtype=object))
    assert list(session_parallel_steps(empty, 4)) == []


def inputs_of(sessions: Sessions) -> list[int]:
    """Every position that has a successor in its session."""
    return [p for s in range(sessions.n_sessions) for p in range(sessions.offsets[s], sessions.offsets[s + 1] - 1)]


def check_invariants(lengths: list[int], batch_size: int) -> None:
    sessions = make_sessions(lengths)
    offsets = sessions.offsets
    session_of = np.repeat(np.arange(len(lengths)), lengths)
    starts = set(offsets[:-1].tolist())
    steps = list(session_parallel_steps(sessions, batch_size))

    # 1. every event with a successor is an input exactly once per epoch, nothing else is
    fed = np.concatenate([s.positions for s in steps]) if steps else np.zeros(0, dtype=np.int64)
    assert sorted(fed.tolist()) == inputs_of(sessions)
    assert len(fed) == sessions.n_events - sessions.n_sessions

    # 2. simulate the hidden state with ids: a row's state is (session, last fed position) or None (zero)
    state: list[tuple[int, int] | None] = [None] * min(batch_size, len(lengths))  # init_hidden
    first_step: dict[int, int] = {}
    n_trainable = sum(1 for n in lengths if n >= 2)
    for t, step in enumerate(steps):
        assert 1 <= len(step.positions) <= batch_size
        if step.keep is not None:
            assert len(set(step.keep.tolist())) == len(step.keep)  # rows kept once, in order
            assert list(step.keep) == sorted(step.keep)
            state = [state[k] for k in step.keep]
        if step.reset is not None:
            for r in step.reset:
                state[r] = None
        assert len(state) == len(step.positions)
        for r, p in enumerate(step.positions.tolist()):
            s = int(session_of[p])
            assert p + 1 < offsets[s + 1], "the target must be in the same session"
            if p in starts:
                assert state[r] is None, f"step {t} row {r}: session {s} starts from a non-zero state {state[r]}"
                first_step[s] = t
            else:
                assert state[r] == (s, p - 1), f"step {t} row {r}: position {p} continues {state[r]}, not its own session"
            state[r] = (s, p)
        # 3. the batch only shrinks once no unused session is left
        if len(step.positions) < batch_size:
            assert len(first_step) == n_trainable, f"step {t}: batch shrank while sessions were left"

    # 4. sessions are consumed in time order: an older session never starts after a newer one
    order = [first_step[s] for s in sorted(first_step)]
    assert order == sorted(order)
    assert len(first_step) == n_trainable


@pytest.mark.parametrize("batch_size", [1, 2, 3, 5, 8])
def test_invariants_on_example(batch_size):
    check_invariants(EXAMPLE, batch_size)


@settings(max_examples=150, deadline=None)
@given(
    lengths=st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=40),
    batch_size=st.integers(min_value=1, max_value=50),
)
def test_invariants_random(lengths, batch_size):
    check_invariants(lengths, batch_size)


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.sampled_from([1, 1, 1, 2, 5]), min_size=1, max_size=30), batch_size=st.integers(1, 6))
def test_invariants_many_length_one_sessions(lengths, batch_size):
    check_invariants(lengths, batch_size)


def test_order_events_sorts_sessions_by_first_event_time():
    # session "b" starts first although it appears later in the file; events inside a session by time
    df = pd.DataFrame(
        {
            "SessionId": ["a", "a", "b", "b", "c", "c"],
            "ItemId": ["x", "y", "z", "w", "u", "v"],
            "Time": [20.0, 10.0, 5.0, 6.0, 30.0, 31.0],
        }
    )
    ordered = order_events(SessionColumns.from_frame(df))
    assert ordered.session_ids.to_pylist() == ["b", "a", "c"] and ordered.offsets.tolist() == [0, 2, 4, 6]
    assert ordered.item_ids.take(ordered.item).to_pylist() == ["z", "w", "y", "x", "u", "v"]
    assert ordered.time.tolist() == [5.0, 6.0, 10.0, 20.0, 30.0, 31.0]
