"""Readers: ids are text in every format, input is streamed (any block size gives the same log), and
bad times are one-line errors naming the row."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import FIXTURES, require_shared
from data_prep import readers
from data_prep.readers import ColumnMap, read_log
from gru4rec.cli import main
from gru4rec.foundation.errors import UserError

BIG = "18446744073709551616"  # 2**64: beyond int64, read as a float (1.8446744073709552e+19) before
T0 = 1_396_310_400


def ids_of(ids) -> list[str]:
    """Each event's id as text."""
    if ids.labels is None:
        return [str(int(c)) for c in ids.codes]
    return [ids.labels[int(c)].as_py() for c in ids.codes]


# ---- ids stay text -----------------------------------------------------------------------------

TEXT_IDS = ["0115", "115", "007", "7", BIG, "nan", "NA"]


def test_csv_and_tsv_keep_ids_as_written(tmp_path):
    for sep, fmt in ((",", "csv"), ("\t", "tsv")):
        path = tmp_path / f"log.{fmt}"
        rows = [f"s{i % 3}{sep}{item}{sep}{T0 + i}" for i, item in enumerate(TEXT_IDS)]
        path.write_text(sep.join(["SessionId", "ItemId", "Time"]) + "\n" + "\n".join(rows) + "\n")
        raw = read_log(path, fmt)
        assert ids_of(raw.item) == TEXT_IDS
        assert len(set(ids_of(raw.item))) == len(TEXT_IDS)  # 007 and 7 stay two items


def test_integer_ids_stay_numbers_ordered_numerically(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("SessionId,ItemId,Time\n10,5,1\n9,-3,2\n10,12,3\n")
    raw = read_log(path, "csv")
    assert raw.item.is_int and raw.session.is_int
    assert raw.item.codes.tolist() == [5, -3, 12] and raw.session.codes.tolist() == [10, 9, 10]


def test_yoochoose_keeps_ids_as_written(tmp_path):
    path = tmp_path / "clicks.dat"
    path.write_text(f"0042,2014-04-07T10:51:09.277Z,0115,0\n0042,2014-04-07T10:52:09.277Z,{BIG},0\n"
                    "42,2014-04-07T10:53:09.277Z,115,0\n")
    raw = read_log(path, "yoochoose")
    assert ids_of(raw.item) == ["0115", BIG, "115"]
    assert ids_of(raw.session) == ["0042", "0042", "42"]


def test_diginetica_keeps_ids_as_written(tmp_path):
    path = tmp_path / "views.csv"
    path.write_text("session_id;user_id;item_id;timeframe;eventdate\n01;NA;0115;10;2016-05-09\n"
                    f"01;NA;{BIG};20;2016-05-09\n1;NA;115;30;2016-05-09")
    raw = read_log(path, "diginetica")
    assert ids_of(raw.item) == ["0115", BIG, "115"]
    assert ids_of(raw.session) == ["01", "01", "1"]


def test_otto_keeps_ids_exact(tmp_path):
    path = tmp_path / "otto.jsonl"
    lines = [{"session": 1, "events": [{"aid": int(BIG), "ts": 1659304800000, "type": "clicks"},
                                       {"aid": 5, "ts": 1659304800001, "type": "carts"}]},
             {"session": 99999999999999999999, "events": [{"aid": 5, "ts": 1659304800002, "type": "orders"}]}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    raw = read_log(path, "otto")
    assert ids_of(raw.item) == [BIG, "5", "5"]
    assert ids_of(raw.session) == ["1", "1", "99999999999999999999"]
    text_ids = tmp_path / "otto-text.jsonl"
    text_ids.write_text(json.dumps({"session": "007", "events": [{"aid": "0115", "ts": 1, "type": "clicks"},
                                                                 {"aid": "115", "ts": 2, "type": "clicks"}]}) + "\n")
    raw = read_log(text_ids, "otto")
    assert ids_of(raw.item) == ["0115", "115"] and ids_of(raw.session) == ["007", "007"]


def test_parquet_ids_keep_their_type(tmp_path):
    table = pa.table({"SessionId": pa.array(["0042", "0042", "42"]),
                      "ItemId": pa.array([int(BIG) - 1, 3, 2**63], pa.uint64()), "Time": [1.0, 2.0, 3.0]})
    pq.write_table(table, tmp_path / "log.parquet")
    raw = read_log(tmp_path / "log.parquet", "parquet")
    assert ids_of(raw.item) == [str(int(BIG) - 1), "3", str(2**63)]
    assert ids_of(raw.session) == ["0042", "0042", "42"]


def test_prepare_writes_ids_as_they_were_read(tmp_path):
    rows = [(1, "0115", 0), (1, "115", 10), (1, BIG, 20), (2, "007", 86400 * 1.5), (2, "7", 86400 * 1.5 + 10)]
    rows += [(2, BIG, 86400 * 1.5 + 20), (2, "0115", 86400 * 1.5 + 30), (3, "0115", 86400 * 3), (3, "7", 86400 * 3 + 5)]
    log = tmp_path / "log.tsv"
    log.write_text("SessionId\tItemId\tTime\n" + "".join(f"{s}\t{i}\t{T0 + t}\n" for s, i, t in rows))
    out = tmp_path / "out"
    assert main(["prepare", "-q", str(log), "--min-item-support", "1", "--out", str(out)]) == 0
    written = pd.read_csv(out / "train_full.tsv", sep="\t", dtype=str)
    assert written["ItemId"].tolist() == ["0115", "115", BIG, "007", "7", BIG, "0115"]
    assert pd.read_csv(out / "test.tsv", sep="\t", dtype=str)["ItemId"].tolist() == ["0115", "7"]


# ---- streaming ---------------------------------------------------------------------------------


def _same_log(a, b) -> None:
    for name in ("item", "session", "user", "event_type"):
        x, y = getattr(a, name), getattr(b, name)
        if x is None:
            assert y is None
            continue
        assert ids_of(x) == ids_of(y), name
    np.testing.assert_array_equal(a.time, b.time)


@pytest.mark.parametrize("source", ["diginetica", "otto", "tsv", "yoochoose"])
def test_small_blocks_read_the_same_log(tmp_path, monkeypatch, source):
    """Blocks split sessions, lines and runs of ids anywhere: the log read must not change."""
    if source == "diginetica":
        path, fmt = require_shared("diginetica_sample", "sample_train-item-views.csv"), "diginetica"
    elif source == "otto":
        path, fmt = FIXTURES / "otto_train.jsonl", "otto"
    elif source == "tsv":
        path, fmt = require_shared("rsc15_100k", "yoochoose-clicks-100k_train_valid.txt.gz"), "tsv"
    else:
        path, fmt = tmp_path / "clicks.dat", "yoochoose"
        path.write_text("".join(f"{i // 4},2014-04-07T10:{i % 60:02d}:09.277Z,{214536500 + i % 13},0\n"
                                for i in range(3000)))
    whole = read_log(path, fmt)
    monkeypatch.setattr(readers, "_BLOCK_SIZE", 1 << 12)  # OTTO lines longer than that: blocks grow to hold them
    _same_log(read_log(path, fmt), whole)


def test_parquet_batches_read_the_same_log(tmp_path, monkeypatch):
    df = pd.DataFrame({"s": np.arange(5000) // 3, "i": [f"x{k % 17}" for k in range(5000)],
                       "t": T0 + np.arange(5000) * 1000})
    df.to_parquet(tmp_path / "log.parquet", row_group_size=700)
    cols = ColumnMap(session="s", item="i", time="t")
    whole = read_log(tmp_path / "log.parquet", "parquet", cols)
    monkeypatch.setattr(readers, "_PARQUET_BATCH_ROWS", 333)
    _same_log(read_log(tmp_path / "log.parquet", "parquet", cols), whole)


# ---- times -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("time", "message"),
    [
        ("1e29", r"row 2 \(line 3\): Time 1e\+29 \(ms\) is out of range"),  # auto unit: milliseconds
        ("inf", r"row 2 \(line 3\): Time 'inf' is not a finite number"),
        ("-9e15", r"row 2 \(line 3\): Time -9000000000000000\.0 \(ms\) is out of range"),
    ],
)
def test_times_out_of_range_are_one_line_errors(tmp_path, capsys, time, message):
    log = tmp_path / "log.csv"
    log.write_text(f"SessionId,ItemId,Time\n1,a,{T0}\n1,b,{time}\n2,a,{T0 + 5}\n")
    with pytest.raises(UserError, match=message) as err:
        read_log(log, "csv")
    assert "\n" not in str(err.value) and "np.float64" not in str(err.value)
    assert main(["prepare", "-q", str(log), "--out", str(tmp_path / "out")]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_infinite_parquet_time_prints_a_plain_value(tmp_path):
    pd.DataFrame({"SessionId": [1, 1], "ItemId": [1, 2], "Time": [1.5, np.inf]}).to_parquet(tmp_path / "t.parquet")
    with pytest.raises(UserError, match=r"row 2: Time inf is not a finite number") as err:
        read_log(tmp_path / "t.parquet", "parquet")
    assert "np.float64" not in str(err.value)
