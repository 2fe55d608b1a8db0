"""From session files to what the model consumes: an item id map and sessions as index arrays."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from gru4rec.data.session_files import read_session_file
from gru4rec.foundation.errors import UserError


@dataclass(frozen=True)
class ItemMap:
    """Item id (str) <-> dense index, built from training data only and stored with the model."""

    ids: np.ndarray  # index -> id (object array of str)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", pd.Index(self.ids))

    def __len__(self) -> int:
        return len(self.ids)

    def lookup(self, ids) -> np.ndarray:
        """Dense indices for ids (str or int); -1 for ids unknown to the model."""
        return self._index.get_indexer(pd.Index(np.asarray(ids).astype(str)))

    @classmethod
    def from_ids(cls, ids) -> ItemMap:
        return cls(np.asarray([str(i) for i in ids], dtype=object))


@dataclass(frozen=True)
class Sessions:
    """Sessions laid out back to back, oldest first; session s is items[offsets[s]:offsets[s+1]]."""

    items: np.ndarray  # int64 item indices
    offsets: np.ndarray  # int64, n_sessions + 1
    session_ids: np.ndarray  # original ids (str), in the same order

    @property
    def n_sessions(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_events(self) -> int:
        return len(self.items)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def order_events(df: pd.DataFrame) -> pd.DataFrame:
    """Sessions by the time of their first event (ties: first appearance), events by time (stable).

    This is the reference's order: training never shuffles sessions.
    """
    first_seen = pd.factorize(df["SessionId"])[0]
    start = df.groupby(first_seen, sort=False)["Time"].transform("min").to_numpy()
    order = np.lexsort((np.arange(len(df)), df["Time"].to_numpy(), first_seen, start))
    return df.iloc[order].reset_index(drop=True)


def build_item_map(df: pd.DataFrame) -> ItemMap:
    """Items in order of first appearance in the (ordered) training data."""
    return ItemMap.from_ids(pd.unique(df["ItemId"]))


def item_counts(df: pd.DataFrame, item_map: ItemMap) -> np.ndarray:
    idx = item_map.lookup(df["ItemId"].to_numpy())
    idx = idx[idx >= 0]
    return np.bincount(idx, minlength=len(item_map)).astype(np.int64)


def to_sessions(df: pd.DataFrame, item_map: ItemMap) -> tuple[Sessions, int]:
    """Index an ordered frame; events with unknown items are dropped and the session stitched together.

    Returns the sessions and the number of dropped events.
    """
    idx = item_map.lookup(df["ItemId"].to_numpy())
    known = idx >= 0
    n_unknown = int((~known).sum())
    sess = df["SessionId"].to_numpy()[known]
    idx = idx[known].astype(np.int64)
    if len(idx) == 0:
        return Sessions(idx, np.zeros(1, dtype=np.int64), np.array([], dtype=object)), n_unknown
    starts = np.flatnonzero(np.r_[True, sess[1:] != sess[:-1]])
    offsets = np.r_[starts, len(idx)].astype(np.int64)
    return Sessions(idx, offsets, sess[starts]), n_unknown


def extend_item_map(base: ItemMap, df: pd.DataFrame, keep_vanished: bool = True) -> ItemMap:
    """A warm start's items: the base model's (all, or those still in df), then df's new items."""
    present = pd.unique(df["ItemId"])
    old = base.ids if keep_vanished else base.ids[pd.Index(base.ids).isin(present)]
    new = present[~pd.Index(present).isin(base.ids)]
    return ItemMap.from_ids(np.concatenate([old, new]))


def load_training_data(
    path: str | os.PathLike[str], base_items: ItemMap | None = None, keep_vanished: bool = True
) -> tuple[Sessions, ItemMap, np.ndarray, pd.DataFrame]:
    """Read a training file; returns sessions, the item map, item counts and the ordered frame.

    With `base_items` (a warm start) the map extends the base model's items instead of starting anew.
    """
    df = read_events(path)
    item_map = build_item_map(df) if base_items is None else extend_item_map(base_items, df, keep_vanished)
    sessions, _ = to_sessions(df, item_map)
    if sessions.n_events - sessions.n_sessions < 1:
        raise UserError(f"{path}: no session has two or more events, nothing to learn from")
    return sessions, item_map, item_counts(df, item_map), df


def read_events(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A session file's events in training/evaluation order (see order_events)."""
    return order_events(read_session_file(path))


def known_event_times(df: pd.DataFrame, item_map: ItemMap) -> np.ndarray:
    """Unix times of the events whose item is known, aligned with to_sessions(df, item_map).items."""
    return df["Time"].to_numpy(dtype=np.float64)[item_map.lookup(df["ItemId"].to_numpy()) >= 0]


def load_eval_data(
    path: str | os.PathLike[str], item_map: ItemMap, events: pd.DataFrame | None = None
) -> tuple[Sessions, int]:
    """Read a test file against a model's items; unknown items are dropped (and counted).

    `events` (read_events(path)) saves re-reading a file evaluated against several models.
    """
    df = events if events is not None else read_events(path)
    sessions, n_unknown = to_sessions(df, item_map)
    if sessions.n_events == 0:
        raise UserError(f"{path}: none of its {len(df)} events has an item the model knows")
    if (sessions.lengths >= 2).sum() == 0:
        raise UserError(f"{path}: after dropping unknown items no session has two known events to evaluate")
    return sessions, n_unknown
