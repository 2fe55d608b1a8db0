"""From session files to what the model consumes: an item id map and sessions as index arrays.

One loader serves training, evaluation, compare, tune, warm start and the baselines: a file is read
into columns (gru4rec.data.session_files), ordered on integer keys (`order_events`), and its sessions
become offsets into one item-index array. Ids stay text throughout, kept as Arrow string arrays, so
neither a whole log nor a million-item catalogue ever becomes a Python object per event or per item.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from gru4rec.data.session_files import SessionColumns, read_session_columns
from gru4rec.foundation.errors import UserError


def _text_array(ids) -> pa.Array:
    """Ids of any kind (Arrow, pandas, numpy, a list; str or int) as one Arrow string array, each as its text."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if not isinstance(ids, pa.Array):
        try:
            ids = pa.array(ids, from_pandas=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed kinds: their text, one by one (small inputs only)
            ids = pa.array([str(i) for i in ids], pa.string())
    if pa.types.is_dictionary(ids.type):
        ids = ids.dictionary_decode()
    if pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type):
        return ids
    if pa.types.is_null(ids.type):
        return pa.array([], pa.string()) if len(ids) == 0 else ids.cast(pa.string())
    if pa.types.is_floating(ids.type) or pa.types.is_boolean(ids.type):
        return pa.array([str(v) for v in ids.to_pylist()], pa.string())  # Python's text, as str() gives
    return pc.cast(ids, pa.string())


class ItemMap:
    """Item id (text) <-> dense index, built from training data only and stored with the model.

    The ids are one Arrow string array; `ids` shows them as a pandas string array (iterating gives
    str, `tolist()` a list), and `lookup` maps many ids at once with a hash join, never a dict.
    """

    __slots__ = ("_arrow",)

    def __init__(self, ids) -> None:
        self._arrow = _text_array(ids)

    def __len__(self) -> int:
        return len(self._arrow)

    def __repr__(self) -> str:
        return f"ItemMap({len(self)} items)"

    @property
    def arrow(self) -> pa.Array:
        """index -> id, as an Arrow string array."""
        return self._arrow

    @property
    def ids(self) -> pd.api.extensions.ExtensionArray:
        """index -> id, as a pandas string array (no Python object per item until one is asked for)."""
        return pd.array(self._arrow, dtype=pd.StringDtype("pyarrow"))

    def equals(self, other: ItemMap) -> bool:
        """Same ids in the same order."""
        return len(self) == len(other) and self._arrow.cast(pa.large_string()).equals(other.arrow.cast(pa.large_string()))

    def lookup(self, ids) -> np.ndarray:
        """Dense indices (int64) for ids (str or int, any array-like); -1 for ids unknown to the model."""
        index = pc.index_in(_text_array(ids), value_set=self._arrow)
        return index.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)

    @classmethod
    def from_ids(cls, ids: Iterable) -> ItemMap:
        return cls(ids)


@dataclass(frozen=True)
class Sessions:
    """Sessions laid out back to back, oldest first; session s is items[offsets[s]:offsets[s+1]]."""

    items: np.ndarray  # int64 item indices
    offsets: np.ndarray  # int64, n_sessions + 1
    session_ids: np.ndarray | pd.api.extensions.ExtensionArray  # original ids (text), in the same order

    @property
    def n_sessions(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_events(self) -> int:
        return len(self.items)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


@dataclass(frozen=True)
class Events:
    """A session file's events in training/evaluation order (see order_events), as columns.

    Session s is events offsets[s]:offsets[s+1] with id session_ids[s]; item[i] is a code into
    item_ids, numbered in order of first appearance in this order (so item_ids is a training file's
    item map as it stands).
    """

    item: np.ndarray  # int32 codes into item_ids
    item_ids: pa.Array
    time: np.ndarray  # float64 Unix seconds
    offsets: np.ndarray  # int64, n_sessions + 1
    session_ids: pa.Array

    def __len__(self) -> int:
        return int(self.item.shape[0])

    @property
    def n_sessions(self) -> int:
        return len(self.offsets) - 1

    def time_span(self) -> list[float]:
        return [float(self.time.min()), float(self.time.max())]


def order_events(columns: SessionColumns) -> Events:
    """Sessions by the time of their first event (ties: first appearance), events by time (stable).

    This is the reference's order: training never shuffles sessions. The usual file (every session
    contiguous and in time order, sessions by start, as prepare writes them) is recognised in a few
    linear passes and not copied; anything else is sorted on integer keys.
    """
    session, time = columns.session, columns.time
    n_sessions = len(columns.session_ids)
    runs = _run_starts(session)
    if len(runs) == n_sessions and _sorted_within_runs(time, runs):
        # contiguous sessions, codes in run order: only whole sessions may need to move
        lengths = np.diff(np.append(runs, len(session)))
        starts = time[runs]
        order = np.argsort(starts, kind="stable") if (starts[1:] < starts[:-1]).any() else None
        del starts
        perm = None if order is None else _gather_runs(runs, len(session), order)
    else:
        start = np.full(n_sessions, np.inf)
        np.minimum.at(start, session, time)
        order = np.argsort(start, kind="stable")  # ties keep the order of first appearance
        rank = np.empty(n_sessions, dtype=np.int64)
        rank[order] = np.arange(n_sessions)
        perm = np.lexsort((time, rank[session]))  # lexsort is stable: ties keep file order
        lengths = np.bincount(session, minlength=n_sessions)
    del runs
    session_ids = columns.session_ids
    if order is not None:
        lengths, session_ids = lengths[order], session_ids.take(pa.array(order))
    offsets = np.zeros(n_sessions + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if perm is None:
        return Events(columns.item, columns.item_ids, time, offsets, session_ids)
    item, item_ids = _renumber_by_first_appearance(columns.item[perm], columns.item_ids)
    return Events(item, item_ids, time[perm], offsets, session_ids)


def _run_starts(codes: np.ndarray) -> np.ndarray:
    change = np.empty(len(codes), dtype=bool)
    change[:1] = True
    np.not_equal(codes[1:], codes[:-1], out=change[1:])
    return np.flatnonzero(change)


def _sorted_within_runs(time: np.ndarray, runs: np.ndarray) -> bool:
    back = time[1:] < time[:-1]
    if not back.any():
        return True
    back[runs[1:] - 1] = False  # a step back between two sessions is fine
    return not back.any()


def _gather_runs(runs: np.ndarray, n: int, order: np.ndarray) -> np.ndarray:
    """The event permutation that puts whole runs (sessions) in `order`, each run kept as it is."""
    lengths = np.diff(np.append(runs, n))[order]
    shift = runs[order] - (np.cumsum(lengths) - lengths)
    return np.repeat(shift, lengths) + np.arange(n, dtype=np.int64)


def _renumber_by_first_appearance(codes: np.ndarray, ids: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Codes renumbered in order of first appearance in `codes` (a hash pass, as pandas.factorize)."""
    encoded = pc.dictionary_encode(pa.array(codes))
    new_codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    return new_codes, ids.take(encoded.dictionary)


def build_item_map(events: Events) -> ItemMap:
    """Items in order of first appearance in the (ordered) training data."""
    return ItemMap(events.item_ids)


def _item_index(events: Events, item_map: ItemMap) -> np.ndarray | None:
    """Model index of each of the file's items (-1: unknown); None when the file's items are the map itself."""
    if events.item_ids is item_map.arrow:
        return None
    return item_map.lookup(events.item_ids)


def item_counts(sessions: Sessions, n_items: int) -> np.ndarray:
    """Training events per item (0 for items the sessions do not hold)."""
    return np.bincount(sessions.items, minlength=n_items).astype(np.int64, copy=False)


def to_sessions(events: Events, item_map: ItemMap) -> tuple[Sessions, int]:
    """Index ordered events; events with unknown items are dropped and the session stitched together.

    Returns the sessions and the number of dropped events.
    """
    index = _item_index(events, item_map)
    session_ids = pd.array(events.session_ids, dtype=pd.StringDtype("pyarrow"))
    if index is None:
        return Sessions(events.item.astype(np.int64), events.offsets, session_ids), 0
    idx = index[events.item]
    known = idx >= 0
    n_unknown = int(len(idx) - np.count_nonzero(known))
    if n_unknown == 0:
        return Sessions(idx, events.offsets, session_ids), 0
    idx = idx[known]
    kept = np.add.reduceat(known, events.offsets[:-1], dtype=np.int64) if len(known) else np.zeros(0, np.int64)
    nonempty = np.flatnonzero(kept > 0)
    offsets = np.zeros(len(nonempty) + 1, dtype=np.int64)
    np.cumsum(kept[nonempty], out=offsets[1:])
    return Sessions(idx, offsets, session_ids[nonempty]), n_unknown


def extend_item_map(base: ItemMap, events: Events, keep_vanished: bool = True) -> ItemMap:
    """A warm start's items: the base model's (all, or those still in the file), then the file's new items."""
    present = events.item_ids
    old = base.arrow if keep_vanished else base.arrow.filter(pc.is_in(base.arrow, value_set=present))
    new = present.filter(pc.invert(pc.is_in(present, value_set=base.arrow)))
    return ItemMap(pa.concat_arrays([old.cast(pa.string()), new.cast(pa.string())]))


def load_training_data(
    path: str | os.PathLike[str], base_items: ItemMap | None = None, keep_vanished: bool = True
) -> tuple[Sessions, ItemMap, np.ndarray, Events]:
    """Read a training file; returns sessions, the item map, item counts and the ordered events.

    With `base_items` (a warm start) the map extends the base model's items instead of starting anew.
    """
    events = read_events(path)
    item_map = build_item_map(events) if base_items is None else extend_item_map(base_items, events, keep_vanished)
    sessions, _ = to_sessions(events, item_map)
    if sessions.n_events - sessions.n_sessions < 1:
        raise UserError(f"{path}: no session has two or more events, nothing to learn from")
    return sessions, item_map, item_counts(sessions, len(item_map)), events


def read_events(path: str | os.PathLike[str]) -> Events:
    """A session file's events in training/evaluation order (see order_events)."""
    return order_events(read_session_columns(path))


def known_event_times(events: Events, item_map: ItemMap) -> np.ndarray:
    """Unix times of the events whose item is known, aligned with to_sessions(events, item_map).items."""
    index = _item_index(events, item_map)
    return events.time if index is None else events.time[index[events.item] >= 0]


def load_eval_data(
    path: str | os.PathLike[str], item_map: ItemMap, events: Events | None = None
) -> tuple[Sessions, int]:
    """Read a test file against a model's items; unknown items are dropped (and counted).

    `events` (read_events(path)) saves re-reading a file evaluated against several models.
    """
    events = events if events is not None else read_events(path)
    sessions, n_unknown = to_sessions(events, item_map)
    if sessions.n_events == 0:
        raise UserError(f"{path}: none of its {len(events)} events has an item the model knows")
    if (sessions.lengths >= 2).sum() == 0:
        raise UserError(f"{path}: after dropping unknown items no session has two known events to evaluate")
    return sessions, n_unknown
