"""Session files: the authors' TSV format, plain or gzip-compressed, and Parquet."""

from __future__ import annotations

import gzip

import pandas as pd

from conftest import require_shared
from gru4rec.data.session_files import read_session_file, write_session_file


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
