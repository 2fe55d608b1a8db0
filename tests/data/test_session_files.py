"""Session files: the authors' TSV format, plain or gzip-compressed, and Parquet."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import require_shared
from gru4rec.data import session_files
from gru4rec.data.session_files import read_session_columns, read_session_file, write_session_file
from gru4rec.data.sessions import load_training_data
from gru4rec.foundation.errors import UserError


def test_gz_tsv_and_parquet_round_trip(tmp_path):
    df = pd.DataFrame({"SessionId": ["1", "1", "2"], "ItemId": ["a", "b", "a"], "Time": [1.5, 2.0, 3.25]})
    for name in ("s.tsv", "s.tsv.gz", "s.parquet"):
        write_session_file(df, tmp_path / name)
        back = read_session_file(tmp_path / name)
        pd.testing.assert_frame_equal(back, df)
    assert gzip.open(tmp_path / "s.tsv.gz").read() == (tmp_path / "s.tsv").read_bytes()
    write_session_file(df, tmp_path / "again.tsv.gz")  # deterministic: no timestamp in the gzip header
    assert (tmp_path / "again.tsv.gz").read_bytes() == (tmp_path / "s.tsv.gz").read_bytes()


def test_rewriting_a_prepared_file_gives_the_same_bytes(tmp_path):
    shipped = require_shared("rsc15_100k", "yoochoose-clicks-100k_train_valid.txt.gz")
    write_session_file(read_session_file(shipped), tmp_path / "valid.tsv.gz")
    assert gzip.open(tmp_path / "valid.tsv.gz").read() == gzip.open(shipped).read()


def test_ids_are_text_exactly_as_written(tmp_path):
    """'nan', 'NA', 'null' are ids like any other; leading zeros and big numbers stay as they are."""
    path = tmp_path / "ids.tsv"
    path.write_text("SessionId\tItemId\tTime\nNA\t0115\t1\nNA\tnan\t2\nnull\t007\t3\nnull\t7\t4\n"
                    "0\t18446744073709551616\t5\n0\tNULL\t6\n")
    cols = read_session_columns(path)
    assert cols.session_ids.to_pylist() == ["NA", "null", "0"]
    assert cols.item_ids.to_pylist() == ["0115", "nan", "007", "7", "18446744073709551616", "NULL"]
    df = read_session_file(path)
    assert df["ItemId"].tolist()[:4] == ["0115", "nan", "007", "7"]
    sessions, item_map, counts, _ = load_training_data(path)
    assert len(item_map) == 6 and counts.tolist() == [1] * 6
    assert item_map.lookup(["007", "7", "nan", "115"]).tolist() == [2, 3, 1, -1]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("1\t2\tnan\n", r"row 3: Time nan is not a number"),
        ("1\t2\tinf\n", r"row 3: Time inf is not a finite number"),
        ("1\t2\t-1e400\n", r"row 3: Time -inf is not a finite number"),
        ("1\t2\tabc\n", r"row 3: Time 'abc' is not a number"),
        ("1\t2\t\n", r"row 3: empty Time"),
        ("1\t\t3\n", r"row 3: empty ItemId"),
        ("\t2\t3\n", r"row 3: empty SessionId"),
        ("1\t2\t3\t4\n", r"cannot read as a session file \(.*Expected 3 columns"),
    ],
)
def test_bad_rows_are_one_line_errors_naming_the_row(tmp_path, body, message):
    path = tmp_path / "bad.tsv"
    path.write_text("SessionId\tItemId\tTime\n1\t2\t1.5\n" + body)
    with pytest.raises(UserError, match=message) as err:
        read_session_columns(path)
    assert "\n" not in str(err.value) and "np.float64" not in str(err.value)
    assert str(err.value).startswith(str(path))


def test_bad_time_is_found_beyond_the_first_block(tmp_path, monkeypatch):
    monkeypatch.setattr(session_files, "_BLOCK_SIZE", 1 << 10)
    path = tmp_path / "late.tsv"
    rows = "".join(f"{i}\t{i % 7}\t{i}.5\n" for i in range(2000))
    path.write_text("SessionId\tItemId\tTime\n" + rows + "7\t7\toops\n")
    with pytest.raises(UserError, match=r"row 2002: Time 'oops' is not a number"):
        read_session_columns(path)


def test_truncated_or_damaged_gzip_is_a_one_line_error(tmp_path):
    data = gzip.compress(b"SessionId\tItemId\tTime\n" + b"".join(b"%d\t%d\t%d\n" % (i // 3, i % 50, i) for i in range(300000)))
    path = tmp_path / "cut.tsv.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated or damaged") as err:
        read_session_columns(path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [("", "empty file"), ("SessionId\tItemId\tTime\n", "no events"), ("a\tb\n1\t2\n", "missing column\\(s\\) SessionId, ItemId, Time")],
)
def test_empty_and_headerless_files(tmp_path, content, message):
    path = tmp_path / "f.tsv"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        read_session_columns(path)


def test_parquet_ids_of_any_type_read_as_text(tmp_path):
    df = pd.DataFrame({"SessionId": [10, 10, 11], "ItemId": pd.Categorical(["007", "7", "007"], categories=["x", "7", "007"]),
                       "Time": [1, 2, 3]})
    df.to_parquet(tmp_path / "a.parquet")
    cols = read_session_columns(tmp_path / "a.parquet")
    assert cols.session_ids.to_pylist() == ["10", "11"] and cols.item_ids.to_pylist() == ["007", "7"]
    assert cols.item.tolist() == [0, 1, 0] and cols.time.dtype == np.float64
    pd.DataFrame({"SessionId": ["a", None], "ItemId": ["x", "y"], "Time": [1.0, 2.0]}).to_parquet(tmp_path / "b.parquet")
    with pytest.raises(UserError, match="row 3: empty SessionId"):
        read_session_columns(tmp_path / "b.parquet")


def test_integer_ids_in_parquet_read_as_their_decimal_text_across_batches(tmp_path, monkeypatch):
    """Integer id columns are their own keys (negatives and int32 included); uint64 beyond int64 is text;
    sessions that come back in a later batch and items seen in several batches keep one code."""
    monkeypatch.setattr(session_files, "_PARQUET_BATCH_ROWS", 2)
    sessions = [-3, -3, 5, 5, 7, -3, 2**62]
    items = np.array([4, -1, 4, 2**40, -1, 0, 4], dtype=np.int64)
    df = pd.DataFrame({"SessionId": sessions, "ItemId": items, "Time": np.arange(7.0)})
    df.to_parquet(tmp_path / "a.parquet", row_group_size=2)
    cols = read_session_columns(tmp_path / "a.parquet")
    assert cols.session_ids.to_pylist() == ["-3", "5", "7", str(2**62)]
    assert cols.session.tolist() == [0, 0, 1, 1, 2, 0, 3]
    assert cols.item_ids.to_pylist() == ["4", "-1", str(2**40), "0"] and cols.item.tolist() == [0, 1, 0, 2, 1, 3, 0]
    small = pd.DataFrame({"SessionId": np.array([9, 9, 8], np.int32), "ItemId": np.array([-2, 30, -2], np.int16),
                          "Time": [1.0, 2.0, 3.0]})
    small.to_parquet(tmp_path / "b.parquet")
    cols = read_session_columns(tmp_path / "b.parquet")
    assert cols.session_ids.to_pylist() == ["9", "8"] and cols.item_ids.to_pylist() == ["-2", "30"]
    big = pa.table({"SessionId": pa.array([2**64 - 1, 1], pa.uint64()), "ItemId": pa.array([2**63, 2**63], pa.uint64()),
                    "Time": [1.0, 2.0]})
    pq.write_table(big, tmp_path / "c.parquet")
    cols = read_session_columns(tmp_path / "c.parquet")
    assert cols.session_ids.to_pylist() == [str(2**64 - 1), "1"] and cols.item_ids.to_pylist() == [str(2**63)]
