"""The synthetic click-log generator: shape, determinism, realism, writers and the `synth` command."""

from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest

from gru4rec.data.session_files import read_session_file
from data_prep.synth import generate_log, write_tsv, write_yoochoose
from gru4rec.cli import main
from gru4rec.foundation.errors import UserError

DAY = 86_400.0


@pytest.fixture(scope="module")
def log200k() -> pd.DataFrame:
    return generate_log(200_000, 2_000, seed=1)


def session_bounds(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    s = df["SessionId"].to_numpy()
    starts = np.r_[0, np.flatnonzero(s[1:] != s[:-1]) + 1]
    return starts, np.diff(np.r_[starts, len(s)])


# --------------------------------------------------------------------------------------------------
# Shape and invariants


@pytest.mark.parametrize("n_events,n_items", [(2, 2), (3, 2), (100, 10), (12_345, 600)])
def test_rows_dtypes_and_order(n_events, n_items):
    df = generate_log(n_events, n_items, seed=3)
    assert list(df.columns) == ["SessionId", "ItemId", "Time"]
    assert len(df) == n_events
    assert df.dtypes.to_dict() == {"SessionId": np.int64, "ItemId": np.int64, "Time": np.float64}
    s, t = df["SessionId"].to_numpy(), df["Time"].to_numpy()
    starts, lengths = session_bounds(df)
    # session ids are 1, 2, 3, ... and each session's rows are contiguous
    assert np.array_equal(s[starts], np.arange(1, len(starts) + 1))
    assert np.array_equal(np.repeat(s[starts], lengths), s)
    # sessions ordered by start, clicks in time order within a session
    assert (np.diff(t[starts]) >= 0).all()
    same = s[1:] == s[:-1]
    assert (np.diff(t)[same] >= 0).all()
    # whole milliseconds
    assert np.array_equal(np.round(t * 1000) / 1000, t)
    items = df["ItemId"].to_numpy()
    assert ((items >= 100_000_000) & (items <= 999_999_999)).all()
    assert df["ItemId"].nunique() <= n_items


def test_time_window_and_daily_cycle(log200k):
    t = log200k["Time"].to_numpy()
    start = pd.Timestamp("2014-04-01", tz="UTC").timestamp()
    assert t.min() >= start and t.max() < start + 7 * DAY
    assert t.min() < start + 0.1 * DAY and t.max() > start + 6.9 * DAY
    hours = np.bincount(((t - start) % DAY // 3600).astype(int), minlength=24) / len(t)
    assert hours[18] > 5 * hours[2]  # evening peak, quiet night

    short = generate_log(1000, 10, seed=0, days=0.5, start="2020-06-01T12:00:00Z")
    base = pd.Timestamp("2020-06-01T12:00:00Z").timestamp()
    assert short["Time"].min() >= base and short["Time"].max() < base + 0.5 * DAY


def test_gaps_within_sessions_are_seconds_to_minutes(log200k):
    s = log200k["SessionId"].to_numpy()
    gaps = np.diff(log200k["Time"].to_numpy())[s[1:] == s[:-1]]
    q10, q50, q90 = np.quantile(gaps, [0.1, 0.5, 0.9])
    assert 3 < q10 < 30 and 30 < q50 < 120 and 120 < q90 < 900
    assert gaps.max() <= 3600


def test_deterministic_and_seed_dependent():
    a = generate_log(5_000, 300, seed=7)
    b = generate_log(5_000, 300, seed=7)
    c = generate_log(5_000, 300, seed=8)
    pd.testing.assert_frame_equal(a, b)
    assert not a["ItemId"].equals(c["ItemId"])


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(n_events=0, n_items=2), "n_events"),
        (dict(n_events=10, n_items=1), "n_items"),
        (dict(n_events=10, n_items=11), "n_items"),
        (dict(n_events=10, n_items=5, seed=-1), "seed"),
        (dict(n_events=10, n_items=5, days=0), "days"),
        (dict(n_events=10, n_items=5, start="yesterday-ish"), "start"),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs, name):
    with pytest.raises(UserError, match=name):
        generate_log(**kwargs)


# --------------------------------------------------------------------------------------------------
# Realism


def test_session_lengths_like_rsc15(log200k):
    _, lengths = session_bounds(log200k)
    assert 0.08 < (lengths == 1).mean() < 0.25
    kept = lengths[lengths >= 2]
    assert 3.5 <= kept.mean() <= 4.5
    assert np.median(kept) == 3
    assert 6 <= np.quantile(kept, 0.9) <= 9
    assert kept.max() >= 50
    assert (kept == 2).mean() > (kept == 3).mean() > (kept == 4).mean()


def test_power_law_popularity(log200k):
    counts = np.sort(log200k["ItemId"].value_counts().to_numpy())[::-1]
    n_items = 2_000
    top1 = counts[: n_items // 100].sum() / len(log200k)
    top10 = counts[: n_items // 10].sum() / len(log200k)
    assert 0.10 < top1 < 0.40
    assert 0.45 < top10 < 0.85
    rank = np.arange(1, len(counts) + 1)
    mid = (rank >= 10) & (rank <= len(counts) // 2)
    slope = np.polyfit(np.log(rank[mid]), np.log(counts[mid]), 1)[0]
    assert -1.6 < slope < -0.7


def test_consecutive_repeats_like_rsc15(log200k):
    s, i = log200k["SessionId"].to_numpy(), log200k["ItemId"].to_numpy()
    repeats = ((s[1:] == s[:-1]) & (i[1:] == i[:-1])).sum() / len(log200k)
    assert 0.12 < repeats < 0.26  # rsc15_100k train_full: 13,625 / 70,278 = 0.19


def recall_at_20(df: pd.DataFrame) -> tuple[float, float]:
    """Next-item Recall@20 of a transition-count Markov model and of most-popular, trained on
    sessions that end before the last day and tested on every transition of the rest (ties count
    against the model)."""
    s, t = df["SessionId"].to_numpy(), df["Time"].to_numpy()
    _, item = np.unique(df["ItemId"].to_numpy(), return_inverse=True)
    n = int(item.max()) + 1
    starts, lengths = session_bounds(df)
    test = np.repeat(t[starts + lengths - 1], lengths) > t.max() - DAY
    same = s[1:] == s[:-1]
    train_pairs, test_pairs = same & ~test[1:], same & test[1:]
    prev, nxt = item[:-1], item[1:]
    counts = np.zeros((n, n), dtype=np.int32)
    np.add.at(counts, (prev[train_pairs], nxt[train_pairs]), 1)
    pop = np.bincount(item[~test], minlength=n)
    a, b = prev[test_pairs], nxt[test_pairs]
    assert len(b) > 5_000
    c = counts[a, b]
    markov_hit = (c > 0) & ((counts[a] >= c[:, None]).sum(axis=1) <= 20)
    pop_hit = (pop[b] > 0) & ((pop[None, :] >= pop[b][:, None]).sum(axis=1) <= 20)
    return float(markov_hit.mean()), float(pop_hit.mean())


def test_markov_beats_popularity_on_a_time_split(log200k):
    markov, pop = recall_at_20(log200k)
    assert pop > 0.02
    assert markov >= 2 * pop
    assert markov > 0.5


# --------------------------------------------------------------------------------------------------
# Writers


def read_yoochoose(path) -> pd.DataFrame:
    raw = pd.read_csv(path, header=None, names=["SessionId", "Time", "ItemId", "Category"],
                      dtype={"Time": str})
    raw["Time"] = pd.to_datetime(raw["Time"], format="%Y-%m-%dT%H:%M:%S.%fZ", utc=True)
    return raw


@pytest.mark.parametrize("name", ["clicks.dat", "clicks.dat.gz"])
def test_yoochoose_round_trip(tmp_path, name):
    df = generate_log(3_000, 200, seed=2)
    path = tmp_path / name
    write_yoochoose(df, path)
    if name.endswith(".gz"):
        with open(path, "rb") as fh:
            assert fh.read(2) == b"\x1f\x8b"
        text = gzip.decompress(path.read_bytes()).decode()
    else:
        text = path.read_text()
    first = text.splitlines()[0].split(",")
    assert len(first) == 4 and first[1].endswith("Z") and len(first[1]) == 24 and first[1][10] == "T"
    back = read_yoochoose(path)
    assert len(back) == len(df)
    assert np.array_equal(back["SessionId"].to_numpy(), df["SessionId"].to_numpy())
    assert np.array_equal(back["ItemId"].to_numpy(), df["ItemId"].to_numpy())
    ms = (back["Time"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)
    assert np.array_equal(ms.to_numpy(), np.round(df["Time"].to_numpy() * 1000).astype(np.int64))
    # categories follow the item's cluster: one category per item, several categories in all
    per_item = back.groupby("ItemId")["Category"].nunique()
    assert (per_item == 1).all() and back["Category"].nunique() > 3 and (back["Category"] >= 1).all()
    assert not list(tmp_path.glob(".*.tmp"))


def test_files_are_byte_identical_for_a_seed(tmp_path):
    for name in ("a.dat.gz", "b.dat.gz"):
        write_yoochoose(generate_log(2_000, 100, seed=5), tmp_path / name)
    assert (tmp_path / "a.dat.gz").read_bytes() == (tmp_path / "b.dat.gz").read_bytes()


def test_yoochoose_without_generator_metadata_writes_category_zero(tmp_path):
    df = pd.DataFrame({"SessionId": [10, 10, 11], "ItemId": [5, 7, 5],
                       "Time": [1396349469.277, 1396349470.0, 0.001]})
    write_yoochoose(df, tmp_path / "x.dat")
    assert (tmp_path / "x.dat").read_text().splitlines() == [
        "10,2014-04-01T10:51:09.277Z,5,0",
        "10,2014-04-01T10:51:10.000Z,7,0",
        "11,1970-01-01T00:00:00.001Z,5,0",
    ]


def test_write_errors_are_user_errors(tmp_path):
    df = generate_log(100, 10)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="file"):
        write_yoochoose(df, blocker / "x.dat")
    with pytest.raises(UserError, match="file"):
        write_tsv(df, blocker / "x.tsv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_tsv_round_trip(tmp_path):
    df = generate_log(2_000, 100, seed=4)
    write_tsv(df, tmp_path / "s.tsv")
    back = read_session_file(tmp_path / "s.tsv")
    assert back["SessionId"].astype(np.int64).tolist() == df["SessionId"].tolist()
    assert back["ItemId"].astype(np.int64).tolist() == df["ItemId"].tolist()
    assert np.array_equal(back["Time"].to_numpy(), df["Time"].to_numpy())


# --------------------------------------------------------------------------------------------------
# The command


def test_cli_writes_yoochoose(tmp_path):
    out = tmp_path / "sub" / "clicks.dat"
    rc = main(["synth", "--events", "500", "--items", "40", "--seed", "3", "--days", "2",
               "--format", "yoochoose", "--out", str(out), "-q"])
    assert rc == 0
    back = read_yoochoose(out)
    assert len(back) == 500
    span = back["Time"].max() - back["Time"].min()
    assert span < pd.Timedelta(days=2)


def test_cli_writes_tsv(tmp_path):
    out = tmp_path / "s.tsv"
    assert main(["synth", "--events", "300", "--items", "30", "--format", "tsv", "--out", str(out)]) == 0
    assert len(read_session_file(out)) == 300


@pytest.mark.parametrize(
    "args,name",
    [
        (["--events", "0", "--items", "2"], "--events"),
        (["--events", "10", "--items", "1"], "--items"),
        (["--events", "10", "--items", "20"], "--items"),
        (["--events", "10", "--items", "5", "--days", "-1"], "--days"),
        (["--events", "10", "--items", "5", "--seed", "-3"], "--seed"),
        (["--events", "10", "--items", "5", "--format", "csv"], "--format"),
        (["--events", "10", "--items", "5", "--start", "not a date"], "--start"),
        (["--events", "10", "--items", "5", "--start", "9999-12-31"], "--start: 9999-12-31 plus 7 days lies outside"),
        (["--events", "10", "--items", "5", "--start", "1969-12-31"], "--start: 1969-12-31 plus 7 days lies outside"),
        (["--events", "10", "--items", "5", "--days", "1e9"], "plus 1e+09 days lies outside the supported time range"),
        (["--events", "1000000000000", "--items", "5"], "--events 1000000000000: generating them needs about 64 TB of memory"),
    ],
)
def test_cli_bad_values_exit_2(tmp_path, capsys, args, name):
    out = tmp_path / "x.dat"
    assert main(["synth", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert name in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_cli_unwritable_out_exit_2(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["synth", "--events", "10", "--items", "5", "--out", str(blocker / "x.dat")]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["synth", "--events", "10", "--items", "5", "--out", str(tmp_path)]) == 2
    assert "--out" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_cli_refuses_a_file_larger_than_the_free_disk(tmp_path, capsys, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 20_000, 20_000))
    assert main(["synth", "--events", "1000", "--items", "5", "--out", str(tmp_path / "x.dat")]) == 2
    assert "--events 1000: the file would take about 48 kB" in capsys.readouterr().err
    assert main(["synth", "--events", "1000", "--items", "5", "--out", str(tmp_path / "x.dat.gz")]) == 0


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["synth", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--events", "--items", "--seed", "--days", "--format", "--out"):
        assert option in text
