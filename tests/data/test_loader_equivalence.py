"""The columnar loader gives exactly what the pandas loader gave: sessions, item maps, counts, order.

tests/data/legacy_loader.py is the former implementation, kept as the reference. Every file is
checked as training data (item map, counts, sessions, times) and as test data against another
file's item map (unknown items dropped and stitched, event times of the known events), in TSV, gzip
and Parquet, as given and reshuffled so that every ordering path of order_events runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import legacy_loader as legacy
from conftest import FIXTURES, require_shared
from gru4rec.data.sessions import (
    ItemMap,
    extend_item_map,
    known_event_times,
    load_eval_data,
    load_training_data,
    read_events,
)
from gru4rec.evaluation.baselines import load_train_set


def _write(df: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".parquet":
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, sep="\t", index=False, compression="gzip" if path.suffix == ".gz" else None)
    return path


def _diginetica(path: Path) -> pd.DataFrame:
    """The raw sample as a session file, rows as in the file: 56% of its sessions are out of time order."""
    raw = pd.read_csv(path, sep=";", dtype=str)
    time = pd.to_datetime(raw["eventdate"]).astype("int64") / 1e9 + raw["timeframe"].astype(int) / 1e3
    return pd.DataFrame({"SessionId": raw["session_id"], "ItemId": raw["item_id"], "Time": time})


def _otto() -> pd.DataFrame:
    rows = []
    for line in (FIXTURES / "otto_train.jsonl").read_text().splitlines():
        obj = json.loads(line)
        rows += [(str(obj["session"]), str(e["aid"]), e["ts"] / 1000) for e in obj["events"]]
    return pd.DataFrame(rows, columns=["SessionId", "ItemId", "Time"])


def _shuffled(df: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Rows in random order: sessions interleaved, times out of order (order_events' general path)."""
    return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def _sessions_reversed(df: pd.DataFrame) -> pd.DataFrame:
    """Whole sessions in reverse file order, each kept intact (the whole-session permutation path)."""
    codes = pd.factorize(df["SessionId"])[0]
    return df.iloc[np.lexsort((np.arange(len(df)), -codes))].reset_index(drop=True)


def assert_same_training(path: Path) -> ItemMap:
    sessions, item_map, counts, events = load_training_data(path)
    df = legacy.read_events(path)
    ids = legacy.build_item_ids(df)
    assert item_map.ids.tolist() == ids.tolist()
    items, offsets, session_ids, n_unknown = legacy.to_sessions(df, ids)
    assert n_unknown == 0
    np.testing.assert_array_equal(sessions.items, items)
    np.testing.assert_array_equal(sessions.offsets, offsets)
    assert list(sessions.session_ids) == session_ids.tolist()
    np.testing.assert_array_equal(counts, legacy.item_counts(df, ids))
    assert sessions.items.dtype == np.int64 and sessions.offsets.dtype == np.int64
    # times bit for bit, in the same order (what STAN and the baselines' session times use)
    np.testing.assert_array_equal(events.time, df["Time"].to_numpy())
    np.testing.assert_array_equal(load_train_set(path).times, df["Time"].to_numpy())
    return item_map


def assert_same_evaluation(path: Path, item_map: ItemMap) -> None:
    ids = np.asarray(item_map.ids.tolist(), dtype=object)
    df = legacy.read_events(path)
    items, offsets, session_ids, n_unknown = legacy.to_sessions(df, ids)
    events = read_events(path)
    sessions, got_unknown = load_eval_data(path, item_map, events)
    assert got_unknown == n_unknown
    np.testing.assert_array_equal(sessions.items, items)
    np.testing.assert_array_equal(sessions.offsets, offsets)
    assert list(sessions.session_ids) == session_ids.tolist()
    np.testing.assert_array_equal(known_event_times(events, item_map), legacy.known_event_times(df, ids))
    for keep in (True, False):  # a warm start on this file from a model that knows item_map
        got = extend_item_map(item_map, events, keep_vanished=keep)
        assert got.ids.tolist() == legacy.extend_item_ids(ids, df, keep_vanished=keep).tolist()


@pytest.fixture(scope="module")
def rsc15() -> Path:
    return require_shared("rsc15_100k")


@pytest.mark.parametrize("name", ["train_full", "train_tr", "train_valid"])
def test_rsc15_files_load_as_before(rsc15, name):
    assert_same_training(rsc15 / f"yoochoose-clicks-100k_{name}.txt.gz")


def test_rsc15_validation_against_train_tr_as_before(rsc15):
    item_map = assert_same_training(rsc15 / "yoochoose-clicks-100k_train_tr.txt.gz")
    assert_same_evaluation(rsc15 / "yoochoose-clicks-100k_train_valid.txt.gz", item_map)


@pytest.mark.parametrize("layout", ["shuffled", "sessions_reversed"])
@pytest.mark.parametrize("suffix", [".tsv", ".tsv.gz", ".parquet"])
def test_reordered_rsc15_loads_as_before(rsc15, tmp_path, layout, suffix):
    df = legacy.read_session_file(rsc15 / "yoochoose-clicks-100k_train_tr.txt.gz")
    valid = legacy.read_session_file(rsc15 / "yoochoose-clicks-100k_train_valid.txt.gz")
    change = _shuffled if layout == "shuffled" else _sessions_reversed
    train_path = _write(change(df, 1) if layout == "shuffled" else change(df), tmp_path / f"tr{suffix}")
    valid_path = _write(change(valid, 2) if layout == "shuffled" else change(valid), tmp_path / f"va{suffix}")
    item_map = assert_same_training(train_path)
    assert_same_evaluation(valid_path, item_map)


def test_diginetica_sample_loads_as_before(tmp_path):
    df = _diginetica(require_shared("diginetica_sample", "sample_train-item-views.csv"))
    first_half = df["SessionId"].astype(int) < df["SessionId"].astype(int).median()
    for suffix in (".tsv", ".parquet"):
        train_path = _write(df[first_half], tmp_path / f"train{suffix}")
        item_map = assert_same_training(train_path)
        assert_same_evaluation(_write(df[~first_half], tmp_path / f"test{suffix}"), item_map)
        assert_same_evaluation(_write(_shuffled(df, 3), tmp_path / f"all{suffix}"), item_map)


def test_otto_fixture_loads_as_before(tmp_path):
    df = _otto()
    train_path = _write(df.iloc[: len(df) // 2], tmp_path / "train.tsv")
    item_map = assert_same_training(train_path)
    assert_same_evaluation(_write(df, tmp_path / "all.tsv"), item_map)
    assert_same_training(_write(_shuffled(df, 4), tmp_path / "shuffled.parquet"))


def test_equal_start_times_keep_the_order_of_first_appearance(tmp_path):
    rows = [("s2", "a", 5.0), ("s1", "b", 5.0), ("s1", "c", 5.0), ("s2", "d", 5.0), ("s3", "e", 1.0), ("s3", "a", 1.0)]
    path = _write(pd.DataFrame(rows, columns=["SessionId", "ItemId", "Time"]), tmp_path / "ties.tsv")
    assert_same_training(path)
    sessions, item_map, _, _ = load_training_data(path)
    assert list(sessions.session_ids) == ["s3", "s2", "s1"]
    assert item_map.ids.tolist() == ["e", "a", "d", "b", "c"]
