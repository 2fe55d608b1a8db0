"""`gru4rec prepare`: readers, the classic and 2023 rules, outputs, determinism, atomicity, bad input.

Every run goes through the real command (`gru4rec.cli.main`). Expected results come either from
hand-written logs whose outcome is worked out in the comments, or from an independent pandas
re-implementation of the recipe below (groupby/isin, written differently from the numpy pipeline).
"""

from __future__ import annotations

import gzip
import json
import zipfile
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gru4rec.cli import main
from gru4rec.foundation.atomic import MARKER
from conftest import FIXTURES, require_shared

DAY = 86400.0
T0 = 1_396_310_400.0  # 2014-04-01T00:00:00Z
SPLITS = ("train_full", "test", "train_tr", "train_valid")
HEADER = "SessionId\tItemId\tTime"


# --------------------------------------------------------------------------------------- helpers


def prepare(*args: str | Path) -> int:
    return main(["prepare", "-q", *map(str, args)])


def read_split(out: Path, name: str) -> pd.DataFrame:
    text = (out / f"{name}.tsv").read_text()
    assert text.startswith(HEADER + "\n"), f"{name}.tsv header"
    assert '"' not in text, f"{name}.tsv must not quote anything"
    return pd.read_csv(out / f"{name}.tsv", sep="\t", dtype={"SessionId": str, "ItemId": str})


def rows(df: pd.DataFrame) -> list[tuple[str, str, int]]:
    """(session, item, time in ms) in file order."""
    ms = np.rint(df["Time"].to_numpy(dtype=np.float64) * 1000).astype(np.int64)
    return list(zip(df["SessionId"].astype(str), df["ItemId"].astype(str), ms.tolist()))


def counts(df: pd.DataFrame) -> tuple[int, int, int]:
    return len(df), df["SessionId"].nunique(), df["ItemId"].nunique()


def assert_canonical_order(df: pd.DataFrame) -> None:
    """Rows grouped by session, sessions by (first time, id), events in time order."""
    sess = df["SessionId"].to_numpy()
    runs = 1 + int(np.count_nonzero(sess[1:] != sess[:-1])) if len(sess) else 0
    assert runs == df["SessionId"].nunique(), "sessions are not contiguous"
    t = df["Time"].to_numpy()
    same = sess[1:] == sess[:-1]
    assert (t[1:][same] >= t[:-1][same]).all(), "events not in time order"
    starts = np.r_[0, np.flatnonzero(~same) + 1]
    first = t[starts]
    assert (first[1:] >= first[:-1]).all(), "sessions not ordered by first event time"


def write_tsv(path: Path, data: list[tuple], header=("SessionId", "ItemId", "Time"), sep="\t") -> Path:
    lines = [sep.join(header)] + [sep.join(str(x) for x in r) for r in data]
    path.write_text("\n".join(lines) + "\n")
    return path


def hms(d: float) -> float:
    return round(T0 + d * DAY, 3)


def reference(df: pd.DataFrame, *, min_len=2, min_sup=5, days=1.0, rule="classic", iterate=False):
    """The recipe with pandas groupby, independent of data_prep.prepare. df: SessionId, ItemId, ms (int)."""
    df = df.sort_values(["SessionId", "ms"], kind="mergesort")

    def by_length(d):
        return d[d.groupby("SessionId")["ItemId"].transform("size") >= min_len]

    df = by_length(df)
    while True:
        before = len(df)
        df = df[df["ItemId"].map(df["ItemId"].value_counts()) >= min_sup]
        df = by_length(df)
        if not iterate or len(df) == before:
            break

    def split(d):
        boundary = d["ms"].max() - days * DAY * 1000
        if rule == "classic":
            last = d.groupby("SessionId")["ms"].max()
            test_ids = set(last.index[last >= boundary])
            train, test = d[~d["SessionId"].isin(test_ids)], d[d["SessionId"].isin(test_ids)]
            test = by_length(test[test["ItemId"].isin(set(train["ItemId"]))])
        else:
            first = d.groupby("SessionId")["ms"].min()
            test_ids = set(first.index[first >= boundary])
            test = d[d["SessionId"].isin(test_ids)]
            train = by_length(d[~d["SessionId"].isin(test_ids) & (d["ms"] < boundary)])
        return train, test

    full, test = split(df)
    tr, valid = split(full)
    out = {}
    for name, d in zip(SPLITS, (full, test, tr, valid)):
        first = d.groupby("SessionId")["ms"].transform("min")
        d = d.assign(first=first).sort_values(["first", "SessionId"], kind="mergesort")
        out[name] = list(zip(d["SessionId"].astype(str), d["ItemId"].astype(str), d["ms"].astype(np.int64).tolist()))
    return out


def assert_matches_reference(out: Path, expected: dict) -> dict:
    got = {}
    for name in SPLITS:
        df = read_split(out, name)
        assert_canonical_order(df)
        assert rows(df) == expected[name], name
        got[name] = counts(df)
    stats = json.loads((out / "stats.json").read_text())
    for name in SPLITS:
        s = stats["splits"][name]
        assert (s["events"], s["sessions"], s["items"]) == got[name]
    return got


# --------------------------------------------------------------------------------------- real data


def test_rsc15_classic_split_reproduces_shipped_train_tr_and_train_valid(tmp_path):
    """The classic split of the shipped train_full gives the shipped train_tr / train_valid exactly.

    The options: --format tsv (SessionId/ItemId/Time are the default column names), --test-days 1,
    --split-rule classic, and --min-item-support 1. The item filter has to be off: the shipped
    train_full was item-filtered *before* its own test split, so some of its items now have fewer
    than 5 events (the minimum is 1) and the default filter would remove rows. The session filter
    (min 2) is a no-op there (every session has at least 2 events), as is the item filter at 1.
    """
    full = require_shared("rsc15_100k", "yoochoose-clicks-100k_train_full.txt.gz")
    shipped_tr = require_shared("rsc15_100k", "yoochoose-clicks-100k_train_tr.txt.gz")
    shipped_valid = require_shared("rsc15_100k", "yoochoose-clicks-100k_train_valid.txt.gz")
    out = tmp_path / "rsc15"
    assert prepare(full, "--format", "tsv", "--min-item-support", "1", "--test-days", "1", "--out", out) == 0

    stats = json.loads((out / "stats.json").read_text())
    filters = next(s for s in stats["steps"] if s["step"].startswith("filters"))
    assert (filters["events"], filters["sessions"], filters["items"]) == (70_278, 17_794, 2_933)  # a no-op

    train, test = read_split(out, "train_full"), read_split(out, "test")
    assert counts(train) == (53_254, 13_629, 2_873)
    assert counts(test) == (16_539, 4_084, 2_029)
    for got, shipped in ((train, shipped_tr), (test, shipped_valid)):
        assert_canonical_order(got)
        ref = pd.read_csv(shipped, sep="\t", dtype={"SessionId": str, "ItemId": str})
        as_set = lambda d: set(zip(d["SessionId"], d["ItemId"], d["Time"].astype(float)))  # noqa: E731
        assert as_set(got) == as_set(ref)
        # Stronger: the same lines as text (Time written like pandas: 1396338639.0, 1396437466.94).
        with gzip.open(shipped, "rt") as fh:
            shipped_lines = fh.read().splitlines()
        got_lines = (out / ("train_full.tsv" if got is train else "test.tsv")).read_text().splitlines()
        assert got_lines[0] == shipped_lines[0] == HEADER
        assert Counter(got_lines[1:]) == Counter(shipped_lines[1:])
    # The next split down (train_tr / train_valid of this train_full) is consistent too.
    assert counts(read_split(out, "train_tr")) == (44_204, 11_316, 2_784)
    assert counts(read_split(out, "train_valid")) == (8_772, 2_276, 1_733)

    # With the default --min-item-support 5 the filter is not a no-op on this file.
    out5 = tmp_path / "rsc15-5"
    assert prepare(full, "--format", "tsv", "--out", out5) == 0
    stats5 = json.loads((out5 / "stats.json").read_text())
    assert next(s for s in stats5["steps"] if s["step"].startswith("filters"))["events"] < 70_278


def _diginetica_frame(path: Path) -> pd.DataFrame:
    raw = pd.read_csv(path, sep=";")
    day_ms = pd.to_datetime(raw["eventdate"], utc=True).astype("datetime64[ns, UTC]").astype("int64") // 1_000_000
    return pd.DataFrame({"SessionId": raw["session_id"].astype(str), "ItemId": raw["item_id"].astype(str),
                         "ms": (day_ms + raw["timeframe"]).astype(np.int64)})


def test_diginetica_sample(tmp_path):
    path = require_shared("diginetica_sample", "sample_train-item-views.csv")
    out = tmp_path / "digi"
    assert prepare(path, "--test-days", "7", "--out", out) == 0  # format detected from the header
    stats = json.loads((out / "stats.json").read_text())
    assert stats["input"]["format"] == "diginetica"
    assert stats["steps"][0]["events"] == 12_391
    expected = reference(_diginetica_frame(path), days=7)
    got = assert_matches_reference(out, expected)
    assert got == {
        "train_full": (1_712, 478, 312),
        "test": (143, 41, 72),
        "train_tr": (1_587, 450, 301),
        "train_valid": (76, 22, 37),
    }
    # Rows of a session are not in time order in the file: the output is sorted.
    first = read_split(out, "train_full")
    assert first["Time"].min() >= datetime(2016, 1, 3, tzinfo=timezone.utc).timestamp()


def _otto_frame(types: tuple[str, ...] | None = None) -> pd.DataFrame:
    records = []
    for line in (FIXTURES / "otto_train.jsonl").read_text().splitlines():
        obj = json.loads(line)
        for e in obj["events"]:
            if types is None or e["type"] in types:
                records.append((str(obj["session"]), str(e["aid"]), int(e["ts"])))
    return pd.DataFrame(records, columns=["SessionId", "ItemId", "ms"])


@pytest.mark.parametrize(
    "rule, extra, expected_counts",
    [
        # 20 sessions over four weeks; the last 10 all happen in the final 40 seconds, so a test
        # window of 0.0002 days (17.28 s) splits them.
        ("classic", (), {"train_full": (843, 12, 509), "test": (17, 7, 8), "train_tr": (839, 10, 507),
                         "train_valid": (2, 1, 2)}),
        ("start", (), {"train_full": (845, 13, 509), "test": (2, 1, 2), "train_tr": (839, 10, 507),
                       "train_valid": (6, 3, 5)}),
        ("classic", ("--event-types", "clicks"), None),
    ],
)
def test_otto_fixture(tmp_path, rule, extra, expected_counts):
    out = tmp_path / "otto"
    args = [FIXTURES / "otto_train.jsonl", "--min-item-support", "1", "--test-days", "0.0002",
            "--split-rule", rule, *extra, "--out", out]
    assert prepare(*args) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["input"]["format"] == "otto"
    assert stats["steps"][0]["events"] == 862
    types = ("clicks",) if extra else None
    if types:
        assert stats["steps"][1]["events"] == 800
    got = assert_matches_reference(out, reference(_otto_frame(types), min_sup=1, days=0.0002, rule=rule))
    if expected_counts:
        assert got == expected_counts


# --------------------------------------------------------------------------------------- split rules

# Sessions (id: item@day) for the split rules, --min-item-support 1, --test-days 1 (boundary day 9):
#   10: a@0.5 b c   11: a@1 b   15: a@8 c   12: a@8.9 b@8.95 | c@9.05 a@9.1   14: a@8.99 | b@9.2
#   13: b@9.5 d@9.6 c@10 (the last event of the log)
SPLIT_LOG = [
    (10, "a", hms(0.5)), (10, "b", hms(0.5) + 60), (10, "c", hms(0.5) + 120),
    (11, "a", hms(1)), (11, "b", hms(1) + 60),
    (12, "a", hms(8.9)), (12, "b", hms(8.95)), (12, "c", hms(9.05)), (12, "a", hms(9.1)),
    (13, "b", hms(9.5)), (13, "d", hms(9.6)), (13, "c", hms(10)),
    (14, "a", hms(8.99)), (14, "b", hms(9.2)),
    (15, "a", hms(8)), (15, "c", hms(8) + 60),
]


def _ids(out: Path, name: str) -> list[tuple[int, str]]:
    df = read_split(out, name)
    return list(zip(df["SessionId"].astype(int), df["ItemId"]))


def test_classic_split_rule(tmp_path):
    log = write_tsv(tmp_path / "log.tsv", SPLIT_LOG)
    out = tmp_path / "out"
    assert prepare(log, "--min-item-support", "1", "--out", out) == 0
    # test = sessions whose LAST event is on/after day 9: 12, 14, 13 (ordered by first event);
    # item d never occurs in train_full and is dropped from 13.
    assert _ids(out, "test") == [(12, "a"), (12, "b"), (12, "c"), (12, "a"), (14, "a"), (14, "b"),
                                 (13, "b"), (13, "c")]
    assert _ids(out, "train_full") == [(10, "a"), (10, "b"), (10, "c"), (11, "a"), (11, "b"), (15, "a"), (15, "c")]
    # train_full ends at day 8 + 60 s: session 15 is its last day
    assert _ids(out, "train_tr") == [(10, "a"), (10, "b"), (10, "c"), (11, "a"), (11, "b")]
    assert _ids(out, "train_valid") == [(15, "a"), (15, "c")]
    df = read_split(out, "test")
    assert df["Time"].tolist()[:2] == [hms(8.9), hms(8.95)]


def test_start_split_rule_truncates_straddling_sessions(tmp_path):
    log = write_tsv(tmp_path / "log.tsv", SPLIT_LOG)
    out = tmp_path / "out"
    assert prepare(log, "--min-item-support", "1", "--split-rule", "start", "--out", out) == 0
    # test = sessions that START on/after day 9: only 13, not filtered to training items (d stays).
    assert _ids(out, "test") == [(13, "b"), (13, "d"), (13, "c")]
    # 12 straddles the boundary: its events after day 9 are cut; 14 keeps one event and is dropped.
    assert _ids(out, "train_full") == [(10, "a"), (10, "b"), (10, "c"), (11, "a"), (11, "b"), (15, "a"), (15, "c"),
                                       (12, "a"), (12, "b")]
    assert read_split(out, "train_full")["Time"].max() == hms(8.95)
    # train_full ends at day 8.95: sessions starting from day 7.95 (15 and 12) are validation.
    assert _ids(out, "train_tr") == [(10, "a"), (10, "b"), (10, "c"), (11, "a"), (11, "b")]
    assert _ids(out, "train_valid") == [(15, "a"), (15, "c"), (12, "a"), (12, "b")]


def test_split_rules_match_reference_on_shuffled_log(tmp_path):
    """Rows in random order, with repeats and ties: both rules against the pandas reference."""
    rng = np.random.default_rng(5)
    n = 3000
    sess = rng.integers(1, 600, n)
    start = rng.uniform(0, 20, 600)
    ms = np.rint((T0 + (start[sess] + rng.exponential(0.05, n)) * DAY) * 1000).astype(np.int64)
    item = rng.zipf(1.6, n) % 97
    log = write_tsv(tmp_path / "log.tsv", [(s, f"i{i}", m / 1000) for s, i, m in zip(sess, item, ms)])
    frame = pd.DataFrame({"SessionId": sess.astype(str), "ItemId": [f"i{i}" for i in item], "ms": ms})
    for rule in ("classic", "start"):
        out = tmp_path / rule
        assert prepare(log, "--split-rule", rule, "--test-days", "2.5", "--min-item-support", "3", "--out", out) == 0
        assert_matches_reference(out, reference(frame, min_sup=3, days=2.5, rule=rule))


# --------------------------------------------------------------------------------------- other rules

# min support 2: q occurs once, so session 2 = [p, q] loses q and then itself; after that p has a
# single event left (in session 1). One pass keeps it; --iterate removes it.
FILTER_LOG = [
    (1, "p", hms(1)), (1, "a", hms(1) + 10), (1, "b", hms(1) + 20),
    (2, "p", hms(1.5)), (2, "q", hms(1.5) + 10),
    (3, "a", hms(2)), (3, "b", hms(2) + 10),
    (4, "a", hms(8)), (4, "b", hms(8) + 10),
    (5, "a", hms(10)), (5, "b", hms(10) + 10),
]


def test_iterate_versus_single_pass(tmp_path):
    log = write_tsv(tmp_path / "log.tsv", FILTER_LOG)
    single, iterated = tmp_path / "single", tmp_path / "iter"
    assert prepare(log, "--min-item-support", "2", "--out", single) == 0
    assert prepare(log, "--min-item-support", "2", "--iterate", "--out", iterated) == 0
    assert _ids(single, "train_full") == [(1, "p"), (1, "a"), (1, "b"), (3, "a"), (3, "b"), (4, "a"), (4, "b")]
    assert _ids(iterated, "train_full") == [(1, "a"), (1, "b"), (3, "a"), (3, "b"), (4, "a"), (4, "b")]
    def filtered_events(out: Path) -> int:
        steps = json.loads((out / "stats.json").read_text())["steps"]
        return next(s["events"] for s in steps if s["step"].startswith("filters"))

    assert filtered_events(single) == 9
    assert filtered_events(iterated) == 8


def test_collapse_repeats(tmp_path):
    log = write_tsv(tmp_path / "log.tsv", [
        (1, "a", hms(1)), (1, "a", hms(1) + 10), (1, "b", hms(1) + 20), (1, "b", hms(1) + 30), (1, "a", hms(1) + 40),
        (2, "a", hms(8)), (2, "b", hms(8) + 10),
        (3, "a", hms(10)), (3, "a", hms(10) + 5), (3, "b", hms(10) + 10),
    ])
    kept, collapsed = tmp_path / "kept", tmp_path / "collapsed"
    assert prepare(log, "--min-item-support", "1", "--out", kept) == 0
    assert prepare(log, "--min-item-support", "1", "--collapse-repeats", "--out", collapsed) == 0
    assert _ids(kept, "train_tr") == [(1, "a"), (1, "a"), (1, "b"), (1, "b"), (1, "a")]  # classic keeps repeats
    assert _ids(collapsed, "train_tr") == [(1, "a"), (1, "b"), (1, "a")]
    assert read_split(collapsed, "train_tr")["Time"].tolist() == [hms(1), hms(1) + 20, hms(1) + 40]
    assert _ids(kept, "test") == [(3, "a"), (3, "a"), (3, "b")]
    assert _ids(collapsed, "test") == [(3, "a"), (3, "b")]


def test_event_type_filter(tmp_path):
    log = write_tsv(tmp_path / "log.csv", [
        ("s1", "a", hms(1), "click"), ("s1", "x", hms(1) + 5, "cart"), ("s1", "b", hms(1) + 10, "view"),
        ("s2", "a", hms(8), "view"), ("s2", "b", hms(8) + 10, "click"),
        ("s3", "a", hms(10), "click"), ("s3", "x", hms(10) + 1, "buy"), ("s3", "b", hms(10) + 10, "click"),
    ], header=("sid", "item", "ts", "kind"), sep=",")
    out = tmp_path / "out"
    assert prepare(log, "--session-col", "sid", "--item-col", "item", "--time-col", "ts", "--type-col", "kind",
                   "--event-types", "click,view", "--min-item-support", "1", "--out", out) == 0
    for name in SPLITS:
        assert "x" not in set(read_split(out, name)["ItemId"])
    assert read_split(out, "test")["ItemId"].tolist() == ["a", "b"]
    assert read_split(out, "test")["SessionId"].tolist() == ["s3", "s3"]  # string session ids survive
    all_types = tmp_path / "all"
    assert prepare(log, "--session-col", "sid", "--item-col", "item", "--time-col", "ts", "--type-col", "kind",
                   "--min-item-support", "1", "--out", all_types) == 0
    assert read_split(all_types, "test")["ItemId"].tolist() == ["a", "x", "b"]


@pytest.mark.parametrize("gap, expected_tr", [
    # u1: a@1d, b@+100 s, 3601 s of silence (more than the gap), a, c -> two sessions.
    # u2: a@2d, exactly 3600 s (not more than the gap), b, c -> one session.
    ("3600", [(1, "a"), (1, "b"), (2, "a"), (2, "c"), (3, "a"), (3, "b"), (3, "c")]),
    ("7200", [(1, "a"), (1, "b"), (1, "a"), (1, "c"), (2, "a"), (2, "b"), (2, "c")]),
])
def test_session_gap_sessionisation(tmp_path, gap, expected_tr):
    t = hms(1)
    log = write_tsv(tmp_path / "log.csv", [
        ("u2", "a", hms(2)), ("u1", "a", t), ("u1", "b", t + 100), ("u1", "a", t + 3701), ("u1", "c", t + 3751),
        ("u2", "b", hms(2) + 3600), ("u2", "c", hms(2) + 3610),
        ("u3", "a", hms(8)), ("u3", "b", hms(8) + 10), ("u4", "a", hms(10)), ("u4", "b", hms(10) + 10),
    ], header=("user", "ItemId", "Time"), sep=",")
    out = tmp_path / "out"
    assert prepare(log, "--user-col", "user", "--session-gap", gap, "--min-item-support", "1", "--out", out) == 0
    # sessions are numbered 1, 2, ... in (user, time) order
    assert _ids(out, "train_tr") == expected_tr
    last = expected_tr[-1][0]
    assert _ids(out, "train_valid") == [(last + 1, "a"), (last + 1, "b")]
    assert _ids(out, "test") == [(last + 2, "a"), (last + 2, "b")]


def test_recent_fraction(tmp_path):
    # training sessions 1..8 on days 1..8 (items i1..i7 and z; session 8 revisits i7); a test
    # session on day 10 with i1, z and i8.
    data = [(k, f"i{k}", hms(k)) for k in range(1, 8)] + [(k, "z", hms(k) + 10) for k in range(1, 9)]
    data += [(8, "i7", hms(8)), (8, "i8", hms(8) + 20)]
    data += [(9, "i1", hms(10)), (9, "z", hms(10) + 10), (9, "i8", hms(10) + 20)]
    log = write_tsv(tmp_path / "log.tsv", data)
    full, recent = tmp_path / "full", tmp_path / "recent"
    assert prepare(log, "--min-item-support", "1", "--out", full) == 0
    assert prepare(log, "--min-item-support", "1", "--recent-fraction", "0.25", "--out", recent) == 0
    assert _ids(full, "test") == [(9, "i1"), (9, "z"), (9, "i8")]
    assert read_split(full, "train_full")["SessionId"].nunique() == 8
    # the most recent quarter of 8 training sessions: 7 and 8; test keeps only their items
    assert sorted(read_split(recent, "train_full")["SessionId"].unique()) == ["7", "8"]
    assert _ids(recent, "test") == [(9, "z"), (9, "i8")]
    assert _ids(recent, "train_tr") == [(7, "i7"), (7, "z")]
    assert _ids(recent, "train_valid") == [(8, "i7"), (8, "z")]


# --------------------------------------------------------------------------------------- time formats


TIME_LOG = [(1, "a", 1.5), (1, "b", 61.25), (2, "a", 0.6 * DAY), (2, "b", 0.6 * DAY + 30),
            (3, "a", 2 * DAY), (3, "b", 2 * DAY + 0.125)]


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.mark.parametrize("unit, convert, option", [
    ("s", lambda t: repr(T0 + t), "auto"),
    ("ms", lambda t: str(int(round((T0 + t) * 1000))), "auto"),
    ("ms-explicit", lambda t: str(int(round((T0 + t) * 1000))), "ms"),
    ("iso", lambda t: _iso(T0 + t), "auto"),
    ("iso-naive", lambda t: _iso(T0 + t)[:-1].replace("T", " "), "iso"),
])
def test_time_units_are_detected(tmp_path, unit, convert, option):
    reference_out = tmp_path / "ref"
    write_tsv(tmp_path / "ref.csv", [(s, i, repr(T0 + t)) for s, i, t in TIME_LOG], sep=",")
    assert prepare(tmp_path / "ref.csv", "--time-unit", "s", "--min-item-support", "1", "--test-days", "0.5",
                   "--out", reference_out) == 0
    log = write_tsv(tmp_path / "log.csv", [(s, i, convert(t)) for s, i, t in TIME_LOG], sep=",")
    out = tmp_path / unit
    assert prepare(log, "--time-unit", option, "--min-item-support", "1", "--test-days", "0.5", "--out", out) == 0
    for name in SPLITS:
        assert (out / f"{name}.tsv").read_bytes() == (reference_out / f"{name}.tsv").read_bytes(), name
    assert read_split(out, "train_tr")["Time"].tolist() == [T0 + 1.5, T0 + 61.25]


YOOCHOOSE_LINES = [
    "1,2014-04-07T10:51:09.277Z,214536502,0",
    "1,2014-04-07T10:54:09.868Z,214536500,0",
    "1,2014-04-07T10:54:46.998Z,214536506,0",
    "2,2014-04-07T13:56:37.614Z,214662742,0",
    "2,2014-04-07T13:57:19.373Z,214536502,S",
    "3,2014-04-09T09:00:00.000Z,214536500,2053",
    "3,2014-04-09T09:01:00.500Z,214536502,2053",
    "4,2014-04-10T12:00:00.000Z,214536502,0",
    "4,2014-04-10T12:00:05.000Z,214536506,0",
    "5,2014-04-10T11:00:00.000Z,214536500,0",  # not in session order in the file
]


def _yoochoose(path: Path, lines=YOOCHOOSE_LINES) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_yoochoose_iso_times(tmp_path):
    log = _yoochoose(tmp_path / "yoochoose-clicks.dat")
    out = tmp_path / "out"
    assert prepare(log, "--min-item-support", "1", "--out", out) == 0  # detected as yoochoose
    assert json.loads((out / "stats.json").read_text())["input"]["format"] == "yoochoose"
    tr = read_split(out, "train_tr")
    expected = datetime(2014, 4, 7, 10, 51, 9, 277000, tzinfo=timezone.utc).timestamp()
    assert tr["Time"].iloc[0] == expected == 1396867869.277
    assert "1\t214536502\t1396867869.277\n" in (out / "train_tr.tsv").read_text()
    assert "3\t214536500\t1397034000.0\n" in (out / "train_valid.tsv").read_text()  # whole seconds keep .0
    assert _ids(out, "train_tr") == [(1, "214536502"), (1, "214536500"), (1, "214536506"),
                                     (2, "214662742"), (2, "214536502")]
    # session 5 (single event) is dropped; test = session 4 (last event at the end of the log)
    assert _ids(out, "test") == [(4, "214536502"), (4, "214536506")]


@pytest.mark.parametrize("kind", ["gz", "zip"])
def test_compressed_input_gives_identical_output(tmp_path, kind):
    plain = _yoochoose(tmp_path / "clicks.dat")
    if kind == "gz":
        packed = tmp_path / "clicks.dat.gz"
        with gzip.open(packed, "wb") as fh:
            fh.write(plain.read_bytes())
    else:
        packed = tmp_path / "clicks.zip"
        with zipfile.ZipFile(packed, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.write(plain, "yoochoose-clicks.dat")
    a, b = tmp_path / "plain", tmp_path / kind
    assert prepare(plain, "--min-item-support", "1", "--out", a) == 0
    assert prepare(packed, "--min-item-support", "1", "--out", b) == 0  # format detected inside the archive
    for name in SPLITS:
        assert (a / f"{name}.tsv").read_bytes() == (b / f"{name}.tsv").read_bytes()
    # a compressed generic table too
    tsv = write_tsv(tmp_path / "log.tsv", SPLIT_LOG)
    with gzip.open(tmp_path / "log.tsv.gz", "wb") as fh:
        fh.write(tsv.read_bytes())
    assert prepare(tmp_path / "log.tsv.gz", "--min-item-support", "1", "--out", tmp_path / "tsvgz") == 0
    assert prepare(tsv, "--min-item-support", "1", "--out", tmp_path / "tsvplain") == 0
    assert (tmp_path / "tsvgz" / "test.tsv").read_bytes() == (tmp_path / "tsvplain" / "test.tsv").read_bytes()


def test_parquet_input_and_output(tmp_path):
    df = pd.DataFrame(SPLIT_LOG, columns=["sess", "item", "t"])
    df["t"] = (df["t"] * 1000).round().astype("int64")  # milliseconds
    df.to_parquet(tmp_path / "log.parquet")
    out, ref = tmp_path / "out", tmp_path / "ref"
    assert prepare(tmp_path / "log.parquet", "--session-col", "sess", "--item-col", "item", "--time-col", "t",
                   "--min-item-support", "1", "--parquet", "--out", out) == 0
    assert prepare(write_tsv(tmp_path / "log.tsv", SPLIT_LOG), "--min-item-support", "1", "--out", ref) == 0
    for name in SPLITS:
        assert (out / f"{name}.tsv").read_bytes() == (ref / f"{name}.tsv").read_bytes()
        pq = pd.read_parquet(out / f"{name}.parquet")
        assert list(pq.columns) == ["SessionId", "ItemId", "Time"]
        assert rows(pq) == rows(read_split(out, name))


# --------------------------------------------------------------------------------------- determinism, atomicity


def test_deterministic_byte_identical_outputs(tmp_path):
    path = FIXTURES / "otto_train.jsonl"
    args = ["--min-item-support", "1", "--test-days", "0.0002", "--parquet"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert prepare(path, *args, "--out", a) == 0
    assert prepare(path, *args, "--out", b) == 0
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    assert names == sorted([f"{s}.tsv" for s in SPLITS] + [f"{s}.parquet" for s in SPLITS] + ["stats.json", MARKER])
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def _leftovers(parent: Path, name: str) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


def test_atomic_output_directory(tmp_path):
    log = write_tsv(tmp_path / "log.tsv", SPLIT_LOG)
    out = tmp_path / "out"
    # a failing run leaves no output directory and no temporary one
    assert prepare(log, "--min-session-length", "9", "--out", out) == 2
    assert not out.exists() and _leftovers(tmp_path, "out") == []
    # an existing output survives a failing run untouched
    assert prepare(log, "--min-item-support", "1", "--out", out) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert prepare(log, "--min-session-length", "9", "--out", out) == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # ... also when the failure happens while writing (an id the TSV cannot hold without quotes)
    bad = tmp_path / "tab.csv"
    bad.write_text("SessionId,ItemId,Time\n" + "\n".join(
        f'{s},"{i}\tx",{t!r}' if i == "d" else f"{s},{i},{t!r}" for s, i, t in SPLIT_LOG) + "\n")
    assert prepare(bad, "--min-item-support", "1", "--split-rule", "start", "--out", out) == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _leftovers(tmp_path, "out") == []
    # a successful run replaces it as a whole
    assert prepare(log, "--min-item-support", "1", "--split-rule", "start", "--out", out) == 0
    assert (out / "test.tsv").read_bytes() != before["test.tsv"]
    assert _leftovers(tmp_path, "out") == []


def test_refuses_to_replace_a_foreign_directory(tmp_path, capsys):
    log = write_tsv(tmp_path / "log.tsv", SPLIT_LOG)
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert prepare(log, "--min-item-support", "1", "--out", out) == 2
    assert (out / "notes.txt").read_text() == "keep me"
    assert "not the output of an earlier" in capsys.readouterr().err


# --------------------------------------------------------------------------------------- bad input


def _fails(capsys, out: Path, *args, expect: tuple[str, ...]) -> str:
    rc = prepare(*args, "--out", out)
    err = capsys.readouterr().err
    assert rc == 2, err
    for part in expect:
        assert part in err, f"{part!r} not in {err!r}"
    assert "Traceback" not in err
    assert not out.exists()
    return err


def test_missing_columns_are_listed(tmp_path, capsys):
    log = write_tsv(tmp_path / "log.tsv", [(1, "a", T0)], header=("session", "item", "time"))
    _fails(capsys, tmp_path / "out", log, expect=(str(log), "'SessionId' (--session-col)", "'ItemId' (--item-col)",
                                                 "session, item, time"))


def test_unparsable_time_names_the_row(tmp_path, capsys):
    log = tmp_path / "log.csv"
    log.write_text(f"SessionId,ItemId,Time\n1,a,{T0}\n1,b,{T0 + 5}\n2,a,yesterday\n")
    _fails(capsys, tmp_path / "out", log, expect=(str(log), "row 3 (line 4)", "'yesterday'"))
    _fails(capsys, tmp_path / "out", log, "--time-unit", "s", expect=(str(log), "row 3", "not a number"))


def test_unparsable_yoochoose_time_names_the_line(tmp_path, capsys):
    lines = list(YOOCHOOSE_LINES)
    lines[1] = "1,2014-13-07T10:54:09.868Z,214536500,0"
    log = _yoochoose(tmp_path / "clicks.dat", lines)
    _fails(capsys, tmp_path / "out", log, "--format", "yoochoose",
           expect=(str(log), "line 2", "2014-13-07T10:54:09.868Z"))


def test_yoochoose_wrong_field_count_and_bad_id(tmp_path, capsys):
    lines = list(YOOCHOOSE_LINES)
    lines[2] = "1,2014-04-07T10:54:46.998Z"
    log = _yoochoose(tmp_path / "clicks.dat", lines)
    _fails(capsys, tmp_path / "out", log, "--format", "yoochoose", expect=(str(log), "line 3", "4 comma-separated"))
    lines = list(YOOCHOOSE_LINES)
    lines[3] = "abc,2014-04-07T13:56:37.614Z,214662742,0"
    log = _yoochoose(tmp_path / "clicks2.dat", lines)
    _fails(capsys, tmp_path / "out", log, "--format", "yoochoose", expect=(str(log), "line 4", "'abc'"))


def test_undetectable_and_unknown_format(tmp_path, capsys):
    log = tmp_path / "mystery.bin"
    log.write_text("hello world\nsomething else\n")
    _fails(capsys, tmp_path / "out", log, expect=(str(log), "cannot tell the input format", "--format"))
    with pytest.raises(SystemExit) as exc:
        prepare(log, "--format", "xml", "--out", tmp_path / "out")
    assert exc.value.code == 2
    assert "invalid choice: 'xml'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content, fmt, expect", [
    ("", "auto", "empty file"),
    ("", "yoochoose", "empty file"),
    ("SessionId\tItemId\tTime\n", "tsv", "no events"),
    ("session_id;user_id;item_id;timeframe;eventdate\n", "diginetica", "no events"),
    ("\n\n", "otto", "empty file"),
])
def test_empty_inputs(tmp_path, capsys, content, fmt, expect):
    log = tmp_path / "log.txt"
    log.write_text(content)
    _fails(capsys, tmp_path / "out", log, "--format", fmt, expect=(str(log), expect))


def test_missing_input_file(tmp_path, capsys):
    _fails(capsys, tmp_path / "out", tmp_path / "nope.csv", expect=("nope.csv", "file not found"))


def test_empty_after_filters_names_the_step(tmp_path, capsys):
    singles = write_tsv(tmp_path / "singles.tsv", [(k, "a", hms(k)) for k in range(1, 6)])
    _fails(capsys, tmp_path / "out", singles, expect=("session length filter", "--min-session-length"))
    log = write_tsv(tmp_path / "log.tsv", SPLIT_LOG)
    _fails(capsys, tmp_path / "out", log, "--min-item-support", "100",
           expect=("item support filter", "items with fewer than 100 events", "--min-item-support"))


def test_empty_test_split_suggests_test_days(tmp_path, capsys):
    # start rule: no session starts in the last day (session 1 spans days 0-10)
    log = write_tsv(tmp_path / "log.tsv", [(1, "a", hms(0)), (1, "b", hms(10)), (2, "a", hms(3)), (2, "b", hms(4))])
    _fails(capsys, tmp_path / "out", log, "--min-item-support", "1", "--split-rule", "start",
           expect=(str(log), "test split has no events", "--test-days"))
    # classic rule: the last session's items never occur in training
    log = write_tsv(tmp_path / "log2.tsv", [(1, "a", hms(1)), (1, "b", hms(1.1)), (2, "c", hms(5)), (2, "d", hms(5.1))])
    _fails(capsys, tmp_path / "out", log, "--min-item-support", "1",
           expect=(str(log), "test split is empty", "--test-days"))
    # everything in the test window: nothing to train on
    _fails(capsys, tmp_path / "out", log, "--min-item-support", "1", "--test-days", "30",
           expect=(str(log), "nothing is left for training", "--test-days"))


def test_bad_diginetica_otto_and_ids(tmp_path, capsys):
    digi = tmp_path / "views.csv"
    digi.write_text("session;user;item;timeframe;eventdate\n1;NA;5;100;2016-05-09\n")
    _fails(capsys, tmp_path / "out", digi, "--format", "diginetica",
           expect=(str(digi), "session_id", "found: session, user, item, timeframe, eventdate"))
    otto = tmp_path / "otto.jsonl"
    good = (FIXTURES / "otto_train.jsonl").read_text().splitlines()[0]
    otto.write_text(good + '\n{"session": 1, "events": [\n')
    _fails(capsys, tmp_path / "out", otto, expect=(str(otto), "line 2", "not valid JSON"))
    empty_item = tmp_path / "log.csv"
    empty_item.write_text(f"SessionId,ItemId,Time\n1,a,{T0}\n1,,{T0 + 1}\n")
    _fails(capsys, tmp_path / "out", empty_item, expect=(str(empty_item), "row 2 (line 3)", "empty ItemId"))


def test_bad_options(tmp_path, capsys):
    log = write_tsv(tmp_path / "log.tsv", SPLIT_LOG)
    _fails(capsys, tmp_path / "out", log, "--test-days", "0", expect=("--test-days",))
    _fails(capsys, tmp_path / "out", log, "--recent-fraction", "1.5", expect=("--recent-fraction",))
    _fails(capsys, tmp_path / "out", log, "--time-unit", "iso", expect=("column Time holds numbers",))
    _fails(capsys, tmp_path / "out", log, "--event-types", "clicks",
           expect=("--event-types needs event types", "--type-col"))
    _fails(capsys, tmp_path / "out", FIXTURES / "otto_train.jsonl", "--event-types", "views",
           expect=("event type filter", "types present: carts, clicks, orders"))


def test_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["prepare", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--format", "--session-col", "--time-unit", "--session-gap", "--event-types", "--collapse-repeats",
                   "--min-session-length", "--min-item-support", "--iterate", "--test-days", "--split-rule",
                   "--recent-fraction", "--parquet", "--out"):
        assert option in text
    assert "(default: 5)" in text and "(default: classic)" in text
