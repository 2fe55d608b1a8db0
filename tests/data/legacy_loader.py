"""The session loader as it was before the columnar one (pandas, one Python string per event).

Kept verbatim as the reference the columnar loader in gru4rec.data must reproduce exactly: the same
sessions, item maps, counts and order on every file (tests/data/test_loader_equivalence.py).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

COLUMNS = ("SessionId", "ItemId", "Time")


def read_session_file(path) -> pd.DataFrame:
    if str(path).endswith(".parquet"):
        df = pd.read_parquet(path)
    else:
        df = pd.read_csv(path, sep="\t", dtype={"ItemId": str, "SessionId": str}, engine="c")
    df = df[list(COLUMNS)]
    df["ItemId"] = df["ItemId"].astype(str)
    df["SessionId"] = df["SessionId"].astype(str)
    df["Time"] = pd.to_numeric(df["Time"], errors="coerce").astype(np.float64)
    return df


def order_events(df: pd.DataFrame) -> pd.DataFrame:
    first_seen = pd.factorize(df["SessionId"])[0]
    start = df.groupby(first_seen, sort=False)["Time"].transform("min").to_numpy()
    order = np.lexsort((np.arange(len(df)), df["Time"].to_numpy(), first_seen, start))
    return df.iloc[order].reset_index(drop=True)


def read_events(path) -> pd.DataFrame:
    return order_events(read_session_file(path))


def lookup(ids: np.ndarray, query) -> np.ndarray:
    return pd.Index(ids).get_indexer(pd.Index(np.asarray(query).astype(str)))


def build_item_ids(df: pd.DataFrame) -> np.ndarray:
    return np.asarray([str(i) for i in pd.unique(df["ItemId"])], dtype=object)


def item_counts(df: pd.DataFrame, ids: np.ndarray) -> np.ndarray:
    idx = lookup(ids, df["ItemId"].to_numpy())
    idx = idx[idx >= 0]
    return np.bincount(idx, minlength=len(ids)).astype(np.int64)


def to_sessions(df: pd.DataFrame, ids: np.ndarray):
    """(items, offsets, session ids, number of dropped events)."""
    idx = lookup(ids, df["ItemId"].to_numpy())
    known = idx >= 0
    n_unknown = int((~known).sum())
    sess = df["SessionId"].to_numpy()[known]
    idx = idx[known].astype(np.int64)
    if len(idx) == 0:
        return idx, np.zeros(1, dtype=np.int64), np.array([], dtype=object), n_unknown
    starts = np.flatnonzero(np.r_[True, sess[1:] != sess[:-1]])
    offsets = np.r_[starts, len(idx)].astype(np.int64)
    return idx, offsets, sess[starts], n_unknown


def extend_item_ids(base: np.ndarray, df: pd.DataFrame, keep_vanished: bool = True) -> np.ndarray:
    present = pd.unique(df["ItemId"])
    old = base if keep_vanished else base[pd.Index(base).isin(present)]
    new = present[~pd.Index(present).isin(base)]
    return np.asarray([str(i) for i in np.concatenate([old, new])], dtype=object)


def known_event_times(df: pd.DataFrame, ids: np.ndarray) -> np.ndarray:
    return df["Time"].to_numpy(dtype=np.float64)[lookup(ids, df["ItemId"].to_numpy()) >= 0]
