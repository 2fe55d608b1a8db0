"""Raw click log -> cleaned, filtered, time-split session files plus statistics.

The pipeline (each step an option; the defaults are the classic RSC15 recipe of the GRU4Rec papers):

1. read the log (`data_prep.readers`), keep only the chosen event types (`event_types`);
2. build sessions from a user id by an inactivity gap when the log has no session id (`session_gap`);
3. order events by (session, time), stable for ties; optionally collapse consecutive repeats;
4. drop sessions shorter than `min_session_length` and items with fewer than `min_item_support`
   events: classic = sessions, items, sessions again (one pass); `iterate` repeats until stable;
5. time split of the last `test_days` (rule `classic`: a session is test if its last event is in the
   window; rule `start`: if its first event is, and sessions straddling the boundary lose their tail);
6. optionally keep only the most recent `recent_fraction` of the training sessions;
7. classic rule only: test keeps items seen in training, then drops sessions shorter than the minimum;
8. the same split of train_full gives train_tr / train_valid.

Everything is vectorised numpy over flat event arrays, with sessions kept contiguous: there is no
Python loop over sessions, so a 33-million-event log takes seconds per step.
"""

from __future__ import annotations

import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa

from data_prep.readers import ColumnMap, Ids, RawLog, read_log
from gru4rec.foundation.atomic import OutputKind, atomic_dir, atomic_file, check_output_dir, default_permissions
from gru4rec.foundation.errors import UserError
from gru4rec.foundation.logs import progress
from gru4rec.foundation.memory import release_arrow_memory, resident_memory

log = logging.getLogger(__name__)

SPLIT_RULES = ("classic", "start")
SPLITS = ("train_full", "test", "train_tr", "train_valid")
_WRITE_PAIRS = (("train_full", "test"), ("train_tr", "train_valid"))  # each big split with a small one
QUANTILES = (("p25", 0.25), ("median", 0.5), ("p75", 0.75), ("p90", 0.9), ("p99", 0.99))
DAY = 86400.0


@dataclass
class PrepareOptions:
    """Processing options; the defaults reproduce the classic RSC15 preparation."""

    event_types: tuple[str, ...] | None = None
    session_gap: float = 3600.0
    collapse_repeats: bool = False
    min_session_length: int = 2
    min_item_support: int = 5
    iterate: bool = False
    test_days: float = 1.0
    split_rule: str = "classic"
    recent_fraction: float | None = None

    def validate(self) -> None:
        if self.min_session_length < 1:
            raise UserError(f"--min-session-length must be at least 1 (got {self.min_session_length})")
        if self.min_item_support < 1:
            raise UserError(f"--min-item-support must be at least 1 (got {self.min_item_support})")
        if not (self.test_days > 0 and np.isfinite(self.test_days)):
            raise UserError(f"--test-days must be a positive number of days (got {self.test_days})")
        if not (self.session_gap > 0 and np.isfinite(self.session_gap)):
            raise UserError(f"--session-gap must be a positive number of seconds (got {self.session_gap})")
        if self.split_rule not in SPLIT_RULES:
            raise UserError(f"--split-rule must be one of {', '.join(SPLIT_RULES)} (got {self.split_rule!r})")
        if self.recent_fraction is not None and not (0 < self.recent_fraction <= 1):
            raise UserError(f"--recent-fraction must be in (0, 1], e.g. 0.015625 for 1/64 (got {self.recent_fraction})")
        if self.event_types is not None and not [t for t in self.event_types if t]:
            raise UserError("--event-types is empty; give a comma-separated list such as clicks,views")


# --------------------------------------------------------------------------------------- frames


@dataclass
class Frame:
    """Events grouped by session (session codes non-decreasing), in time order within a session."""

    session: np.ndarray  # int64 session codes
    item: np.ndarray  # int64 dense item codes
    time: np.ndarray  # float64 Unix seconds

    def __len__(self) -> int:
        return int(self.time.shape[0])

    def take(self, mask: np.ndarray) -> Frame:
        return Frame(self.session[mask], self.item[mask], self.time[mask])

    def runs(self) -> tuple[np.ndarray, np.ndarray]:
        """(start index, length) of every session."""
        n = len(self)
        if n == 0:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        change = np.empty(n, dtype=bool)
        change[0] = True
        np.not_equal(self.session[1:], self.session[:-1], out=change[1:])
        starts = np.flatnonzero(change)
        lengths = np.diff(np.append(starts, n))
        return starts, lengths

    def n_sessions(self) -> int:
        if len(self) == 0:
            return 0
        return int(np.count_nonzero(self.session[1:] != self.session[:-1])) + 1

    def n_items(self, n_items_total: int) -> int:
        return int(np.count_nonzero(np.bincount(self.item, minlength=n_items_total)))


def _drop_short_sessions(frame: Frame, min_len: int) -> Frame:
    if min_len <= 1 or len(frame) == 0:
        return frame
    _starts, lengths = frame.runs()
    if lengths.min() >= min_len:
        return frame
    return frame.take(np.repeat(lengths >= min_len, lengths))


def _drop_rare_items(frame: Frame, min_support: int, n_items: int) -> Frame:
    if min_support <= 1 or len(frame) == 0:
        return frame
    frequent = np.bincount(frame.item, minlength=n_items) >= min_support
    keep = frequent[frame.item]
    return frame if keep.all() else frame.take(keep)


def _order_by_session_time(session: np.ndarray, time: np.ndarray) -> np.ndarray | None:
    """A stable permutation ordering events by (session, time); None when they already are."""
    n = session.shape[0]
    if n < 2:
        return None
    sess_ok = session[1:] >= session[:-1]
    if sess_ok.all():
        same = session[1:] == session[:-1]
        back = time[1:] < time[:-1]
        if not (same & back).any():
            return None
    del sess_ok
    if (time[1:] >= time[:-1]).all():  # a time-ordered log: a stable sort by session is enough
        return np.argsort(session, kind="stable")
    return np.lexsort((time, session))


# --------------------------------------------------------------------------------------- pipeline


@dataclass
class Prepared:
    """The four splits (as frames) plus everything needed to write them back with the original ids."""

    splits: dict[str, Frame]
    session_values: np.ndarray | pa.Array  # session code -> original session id (int64 or string)
    item_values: np.ndarray | pa.Array  # item code -> original item id (int64 or string)
    n_items: int
    steps: list[dict] = field(default_factory=list)
    boundaries: dict[str, float] = field(default_factory=dict)


class _Steps:
    """Records event/session/item counts after each step and drives the progress bar."""

    def __init__(self, n_items: int | None = None, bar=None, t0: float | None = None):
        self.t0 = time.perf_counter() if t0 is None else t0
        self.rows: list[dict] = []
        self.n_items = n_items
        self.bar = bar

    def record(self, name: str, frame: Frame | None, *, events=None, sessions=None, items=None) -> None:
        row = {"step": name}
        if frame is not None:
            row.update(events=len(frame), sessions=frame.n_sessions(), items=frame.n_items(self.n_items))
        else:
            given = (("events", events), ("sessions", sessions), ("items", items))
            row.update({k: v for k, v in given if v is not None})
        self.rows.append(row)
        summary = ", ".join(f"{row[k]:,} {k}" for k in ("events", "sessions", "items") if k in row)
        log.info("%-34s %s (%.1f s)", name + ":", summary, time.perf_counter() - self.t0)
        log.debug("memory after %s: %s", name, resident_memory())
        if self.bar is not None:
            self.bar.set_postfix_str(name)
            self.bar.update(1)


def _empty_error(raw: RawLog, step: str, hint: str) -> UserError:
    return UserError(f"{raw.path}: no events left after {step}; {hint}")


def _filter_event_types(raw: RawLog, wanted: tuple[str, ...]) -> np.ndarray | None:
    """Boolean mask of events to keep, or None when every event is kept."""
    wanted = tuple(t.strip() for t in wanted if t.strip())
    if raw.event_type is None:
        if raw.implicit_type is None:
            raise UserError(
                f"{raw.path}: --event-types needs event types, but none were read; pass --type-col NAME "
                f"to name the column holding them"
            )
        if raw.implicit_type in wanted:
            return None
        raise UserError(
            f"{raw.path}: no events left after the event type filter: every {raw.format} event is of type "
            f"{raw.implicit_type!r}, which is not among --event-types {','.join(wanted)}"
        )
    labels = raw.event_type.labels
    names = [str(x) for x in labels.to_pylist()] if labels is not None else None
    if names is None:  # integer type codes: compare as text
        uniq = np.unique(raw.event_type.codes)
        names_map = {str(int(u)): int(u) for u in uniq}
        keep_codes = [names_map[t] for t in wanted if t in names_map]
        present = list(names_map)
        mask = np.isin(raw.event_type.codes, np.asarray(keep_codes, dtype=np.int64))
    else:
        present = names
        lut = np.array([n in wanted for n in names], dtype=bool)
        mask = lut[raw.event_type.codes] if lut.size else np.zeros(len(raw), bool)
    unknown = [t for t in wanted if t not in present]
    if unknown:
        log.warning("%s: event type(s) %s do not occur (types present: %s)",
                    raw.path, ", ".join(unknown), ", ".join(present))
    if not mask.any():
        raise UserError(
            f"{raw.path}: no events left after the event type filter --event-types {','.join(wanted)} "
            f"(types present: {', '.join(present)})"
        )
    return None if mask.all() else mask


def _sessionise(user: np.ndarray, time: np.ndarray, gap: float) -> tuple[np.ndarray, np.ndarray]:
    """Sessions from user ids: a new session starts at a new user or after more than `gap` s of inactivity.

    Returns (permutation ordering events by user then time, session id per ordered event). Session
    ids are 1, 2, ... in (user, time) order.
    """
    perm = _order_by_session_time(user, time)
    if perm is not None:
        user, time = user[perm], time[perm]
    new = np.empty(user.shape[0], dtype=bool)
    if new.size:
        new[0] = True
        new[1:] = (user[1:] != user[:-1]) | ((time[1:] - time[:-1]) > gap)
    return perm, np.cumsum(new, dtype=np.int64)


def _split(frame: Frame, days: float, rule: str, min_len: int) -> tuple[Frame, Frame, float]:
    """(earlier part, last-`days` part, boundary time) by the chosen rule (see module docstring)."""
    tmax = float(frame.time.max())
    boundary = tmax - days * DAY
    starts, lengths = frame.runs()
    if rule == "classic":
        key = frame.time[starts + lengths - 1]  # last event (events are time-ordered in a session)
    else:
        key = frame.time[starts]
    in_test = np.repeat(key >= boundary, lengths)
    train, test = frame.take(~in_test), frame.take(in_test)
    if rule == "start" and len(train):
        cut = train.time < boundary
        if not cut.all():
            n_cut = int(np.count_nonzero(~cut))
            train = _drop_short_sessions(train.take(cut), min_len)
            log.info("start rule: %s events after the boundary cut from sessions straddling it", f"{n_cut:,}")
    return train, test, boundary


def _keep_recent(frame: Frame, fraction: float) -> Frame:
    """Keep the most recent `fraction` of sessions (by last event time, then session id)."""
    starts, lengths = frame.runs()
    last = frame.time[starts + lengths - 1]
    order = np.lexsort((frame.session[starts], last))
    n_keep = int(len(order) * fraction)
    if n_keep == 0:
        raise UserError(
            f"--recent-fraction {fraction} of {len(order):,} training sessions keeps none; use a larger fraction"
        )
    keep = np.zeros(len(order), dtype=bool)
    keep[order[len(order) - n_keep:]] = True
    return frame.take(np.repeat(keep, lengths))


def _restrict_to_items(test: Frame, train: Frame, n_items: int, min_len: int) -> Frame:
    known = np.zeros(n_items, dtype=bool)
    known[train.item] = True
    return _drop_short_sessions(test.take(known[test.item]), min_len)


def run_pipeline(raw: RawLog, opts: PrepareOptions, t0: float | None = None) -> Prepared:
    """Apply options to a raw log; returns the four splits. UserError when a step leaves nothing."""
    opts.validate()
    bar = progress(total=7 + (opts.recent_fraction is not None), desc="prepare", unit="step")
    try:
        return _run(raw, opts, _Steps(bar=bar, t0=t0))
    finally:
        bar.close()


def _run(raw: RawLog, opts: PrepareOptions, steps: _Steps) -> Prepared:
    if len(raw) == 0:
        raise UserError(f"{raw.path}: empty file (no events)")
    steps.record("read", None, events=len(raw))
    events = _select_event_types(raw, opts, steps)
    frame, session_values, item_values = _sessions(events, opts)
    n_items = steps.n_items = int(len(item_values))
    steps.record("sessions", frame)
    if opts.collapse_repeats:
        frame = _collapse_repeats(frame)
    steps.record("collapse repeats" if opts.collapse_repeats else "collapse repeats (off)", frame)
    frame = _filter(raw, frame, opts, n_items, steps)
    splits, boundaries = _split_all(raw, frame, opts, n_items, steps)
    return Prepared(splits, session_values, item_values, n_items, steps.rows, boundaries)


@dataclass
class _Events:
    """The raw log's columns once the event types are chosen (the raw log itself is emptied)."""

    time: np.ndarray
    item: Ids
    session: Ids | None
    user: Ids | None


def _select_event_types(raw: RawLog, opts: PrepareOptions, steps: _Steps) -> _Events:
    """Step 1: keep the chosen event types. The raw log is consumed: its arrays are dropped as soon as used."""
    mask = _filter_event_types(raw, opts.event_types) if opts.event_types is not None else None
    events = _Events(raw.time, raw.item, raw.session, raw.user)
    raw.time = raw.item = raw.session = raw.user = raw.event_type = None
    if mask is not None:
        events = _Events(events.time[mask], events.item.take(mask),
                         events.session.take(mask) if events.session is not None else None,
                         events.user.take(mask) if events.user is not None else None)
    steps.record("event type filter" if opts.event_types is not None else "event types (all kept)", None,
                 events=int(events.time.shape[0]))
    return events


def _sessions(events: _Events, opts: PrepareOptions) -> tuple[Frame, np.ndarray | pa.Array, np.ndarray | pa.Array]:
    """Steps 2-3: sessions (from the session id, or from users by the inactivity gap), events ordered by
    (session, time); session codes become run numbers 0, 1, ... and items dense codes. Returns the frame
    and the original session and item id of each code."""
    if events.session is None:
        perm, session = _sessionise(events.user.codes, events.time, opts.session_gap)
        events.user = None
        log.info("sessions built from user ids with an inactivity gap of %g s", opts.session_gap)
    else:
        perm = _order_by_session_time(events.session.codes, events.time)
        session = events.session.codes if perm is None else events.session.codes[perm]
    time = events.time if perm is None else events.time[perm]
    item_codes = events.item.codes if perm is None else events.item.codes[perm]
    events.time = None
    del perm
    session, session_values = _run_numbers(session, events.session)
    events.session = None
    item, item_values = _dense_items(item_codes, events.item)
    events.item = None
    release_arrow_memory()
    return Frame(session, item, time), session_values, item_values


def _run_numbers(session: np.ndarray, ids: Ids | None) -> tuple[np.ndarray, np.ndarray | pa.Array]:
    """Runs of equal session codes numbered 0, 1, ... (int32 when they fit); and each run's original id
    (1, 2, ... for sessions built from users)."""
    change = np.empty(session.shape[0], dtype=bool)
    change[:1] = True
    np.not_equal(session[1:], session[:-1], out=change[1:])
    starts = np.flatnonzero(change)
    if ids is None:
        values = np.arange(1, starts.shape[0] + 1, dtype=np.int64)
    elif ids.labels is None:
        values = session[starts]
    else:
        values = ids.labels.take(pa.array(session[starts]))
    numbers = np.cumsum(change, dtype=np.int32 if starts.shape[0] < 2**31 else np.int64)
    numbers -= 1
    return numbers, values


def _dense_items(codes: np.ndarray, ids: Ids) -> tuple[np.ndarray, np.ndarray | pa.Array]:
    """Item codes 0..n-1 (int32 when they fit) and each code's original id: integer ids are hashed to
    codes in order of first appearance; text ids already are dense codes."""
    import pandas as pd

    if ids.is_int:
        dense, uniques = pd.factorize(codes, sort=False)
        del codes
        values = np.asarray(uniques, dtype=np.int64)
        return dense.astype(np.int32 if len(values) < 2**31 else np.int64), values
    return codes.astype(np.int32 if len(ids.labels) < 2**31 else np.int64), ids.labels


def _collapse_repeats(frame: Frame) -> Frame:
    """Drop consecutive repeats of the same item within a session."""
    if len(frame) <= 1:
        return frame
    keep = np.empty(len(frame), dtype=bool)
    keep[0] = True
    keep[1:] = (frame.session[1:] != frame.session[:-1]) | (frame.item[1:] != frame.item[:-1])
    return frame.take(keep)


def _split_all(
    raw: RawLog, frame: Frame, opts: PrepareOptions, n_items: int, steps: _Steps
) -> tuple[dict[str, Frame], dict[str, float]]:
    """Steps 5-8: train_full / test by time (recent fraction, known items), then train_tr / train_valid."""
    train, test, test_start = _split(frame, opts.test_days, opts.split_rule, opts.min_session_length)
    del frame
    _check_split(raw, "test", train, test, opts, "the log")
    if opts.recent_fraction is not None:
        train = _keep_recent(train, opts.recent_fraction)
        steps.record(f"recent fraction {opts.recent_fraction:g} of train", train)
    test = _known_items_only(raw, test, train, n_items, opts, "test split", "training")
    steps.record("split train_full / test", None, events=len(train) + len(test))
    train_tr, valid, valid_start = _split(train, opts.test_days, opts.split_rule, opts.min_session_length)
    _check_split(raw, "validation", train_tr, valid, opts, "train_full")
    valid = _known_items_only(
        raw, valid, train_tr, n_items, opts, "validation split (train_valid, the last --test-days of train_full)", "train_tr"
    )
    steps.record("split train_tr / train_valid", None, events=len(train_tr) + len(valid))
    splits = {"train_full": train, "test": test, "train_tr": train_tr, "train_valid": valid}
    return splits, {"test_start": test_start, "valid_start": valid_start}


def _known_items_only(
    raw: RawLog, held_out: Frame, train: Frame, n_items: int, opts: PrepareOptions, name: str, train_name: str
) -> Frame:
    """Classic rule: a held-out split keeps only items seen in its training part, then drops short sessions."""
    if opts.split_rule != "classic":
        return held_out
    held_out = _restrict_to_items(held_out, train, n_items, opts.min_session_length)
    if len(held_out) == 0:
        raise UserError(
            f"{raw.path}: the {name} is empty after keeping only items seen in {train_name} and dropping "
            f"sessions shorter than {opts.min_session_length}; try a larger --test-days"
        )
    return held_out


def _check_split(raw: RawLog, name: str, train: Frame, test: Frame, opts: PrepareOptions, what: str) -> None:
    window = f"the last {opts.test_days:g} day(s) of {what}"
    if len(test) == 0:
        moment = "ends" if opts.split_rule == "classic" else "starts"
        raise UserError(
            f"{raw.path}: the {name} split has no events: no session {moment} within {window}; "
            f"use a larger --test-days"
        )
    if len(train) == 0:
        raise UserError(
            f"{raw.path}: nothing is left for training before the {name} split: every session falls within "
            f"{window}; use a smaller --test-days"
        )


def _filter(raw: RawLog, frame: Frame, opts: PrepareOptions, n_items: int, steps: _Steps) -> Frame:
    min_len, min_sup = opts.min_session_length, opts.min_item_support
    hint_len = f"lower --min-session-length (now {min_len})"
    hint_sup = f"lower --min-item-support (now {min_sup})"

    def sessions_step(f: Frame, label: str) -> Frame:
        f = _drop_short_sessions(f, min_len)
        if len(f) == 0:
            raise _empty_error(raw, f"{label} (sessions shorter than {min_len} events)", hint_len)
        return f

    def items_step(f: Frame, label: str) -> Frame:
        f = _drop_rare_items(f, min_sup, n_items)
        if len(f) == 0:
            raise _empty_error(raw, f"{label} (items with fewer than {min_sup} events)", hint_sup)
        return f

    frame = sessions_step(frame, "the session length filter")
    frame = items_step(frame, "the item support filter")
    frame = sessions_step(frame, "the second session length filter")
    rounds = 1
    if opts.iterate:
        while True:
            before = len(frame)
            frame = items_step(frame, f"the item support filter (round {rounds + 1})")
            frame = sessions_step(frame, f"the session length filter (round {rounds + 1})")
            if len(frame) == before:
                break
            rounds += 1
    steps.record("filters" + (f" (iterated until stable, {rounds} round(s))" if opts.iterate else " (single pass)"),
                 frame)
    return frame


# --------------------------------------------------------------------------------------- statistics


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def split_stats(frame: Frame, n_items_total: int) -> dict:
    _starts, lengths = frame.runs()
    q = np.quantile(lengths, [p for _, p in QUANTILES]) if len(lengths) else [0.0] * len(QUANTILES)
    t0, t1 = float(frame.time.min()), float(frame.time.max())
    return {
        "events": len(frame),
        "sessions": int(len(lengths)),
        "items": frame.n_items(n_items_total),
        "session_length": {
            "min": int(lengths.min()),
            **{name: float(v) for (name, _), v in zip(QUANTILES, q)},
            "max": int(lengths.max()),
            "mean": round(float(lengths.mean()), 6),
        },
        "time": {"first": t0, "last": t1, "first_utc": _utc(t0), "last_utc": _utc(t1),
                 "span_days": round((t1 - t0) / DAY, 6)},
    }


def format_stats_table(stats: dict) -> str:
    """A plain-text table of the per-split statistics (what the command prints)."""
    head = ["split", "events", "sessions", "items", "min", "p25", "median", "p75", "p90", "p99", "max", "first (UTC)",
            "last (UTC)", "days"]
    rows = [head]
    for name in SPLITS:
        s = stats["splits"][name]
        sl = s["session_length"]
        rows.append([
            name, f"{s['events']:,}", f"{s['sessions']:,}", f"{s['items']:,}", str(sl["min"]),
            *(f"{sl[k]:g}" for k in ("p25", "median", "p75", "p90", "p99")), str(sl["max"]),
            s["time"]["first_utc"][:19].replace("T", " "), s["time"]["last_utc"][:19].replace("T", " "),
            f"{s['time']['span_days']:.2f}",
        ])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = []
    for j, r in enumerate(rows):
        cells = [c.ljust(w) if i == 0 or i >= 11 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- writing


def _output_frame(prepared: Prepared, frame: Frame):
    """A DataFrame SessionId/ItemId/Time with original ids, sessions ordered by first event time then id."""
    import pandas as pd

    starts, lengths = frame.runs()
    first = frame.time[starts]
    if len(first) > 1 and not (first[1:] >= first[:-1]).all():
        order = np.argsort(first, kind="stable")  # ties keep ascending session id (runs are sorted by id)
        lengths_o = lengths[order]
        offsets = np.cumsum(lengths_o) - lengths_o
        idx = np.repeat(starts[order] - offsets, lengths_o) + np.arange(len(frame), dtype=np.int64)
        session, item, time = frame.session[idx], frame.item[idx], frame.time[idx]
        del idx
    else:
        session, item, time = frame.session, frame.item, frame.time
    session_col = _id_column(prepared.session_values, session, pd)
    del session
    item_col = _id_column(prepared.item_values, item, pd)
    del item
    return pd.DataFrame({"SessionId": session_col, "ItemId": item_col, "Time": time}, copy=False)


def _id_column(values: np.ndarray | pa.Array, codes: np.ndarray, pd):
    """Original ids for codes: an int64 array, or a Categorical over the string ids."""
    if isinstance(values, np.ndarray):
        return values[codes]
    return pd.Categorical.from_codes(codes, categories=pd.Index(values.to_pylist(), dtype=object))


def write_outputs(prepared: Prepared, out_dir: Path, stats: dict, parquet: bool) -> None:
    from gru4rec.data.session_files import write_session_file

    def write(df, name: str, ext: str) -> None:
        write_session_file(df, out_dir / f"{name}{ext}")
        log.debug("wrote %s%s (%s events); memory: %s", name, ext, f"{len(df):,}", resident_memory())

    # Writing is about half of a prepare run. Files are written two at a time, one per core (pyarrow's
    # writers release the GIL): a split's TSV and Parquet copies together, and the small split of each
    # pair on the core its big split's shorter write leaves idle. At most one big frame at a time.
    exts = (".tsv", ".parquet") if parquet else (".tsv",)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="gru4rec-write") as pool:
        for pair in progress(_WRITE_PAIRS, desc="write", unit="pair"):
            jobs = []
            for name in pair:
                df = _output_frame(prepared, prepared.splits[name])
                jobs += [pool.submit(write, df, name, ext) for ext in exts]
                del df
            for job in jobs:
                job.result()
            release_arrow_memory()
    with atomic_file(out_dir / "stats.json", "w", encoding="utf-8", newline="\n") as fh:
        json.dump(stats, fh, indent=2)
        fh.write("\n")


PREPARE_OUTPUT = OutputKind(
    "prepared data directory", "gru4rec prepare",
    frozenset({f"{name}{ext}" for name in SPLITS for ext in (".tsv", ".parquet")} | {"stats.json"}), "stats.json",
)


def _check_out_dir(out: Path, input_path: Path) -> None:
    check_output_dir(out, PREPARE_OUTPUT)
    try:
        if input_path.resolve().is_relative_to(out.resolve()):
            raise UserError(f"{out}: the input file {input_path} lies inside --out, which would be replaced")
    except OSError:
        pass


def prepare(
    input_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    fmt: str = "auto",
    columns: ColumnMap | None = None,
    options: PrepareOptions | None = None,
    parquet: bool = False,
) -> dict:
    """Read, process and write a prepared directory atomically; returns the statistics (as in stats.json)."""
    options = options or PrepareOptions()
    columns = columns or ColumnMap()
    options.validate()
    input_path, out = Path(input_path), Path(out_dir)
    _check_out_dir(out, input_path)
    t0 = time.perf_counter()
    raw = read_log(input_path, fmt, columns)
    detected = raw.format
    prepared = run_pipeline(raw, options, t0)
    del raw
    stats = {
        "input": {"path": str(input_path), "format": detected},
        "options": {
            **asdict(options),
            "event_types": list(options.event_types) if options.event_types is not None else None,
            "columns": asdict(columns) if detected in ("csv", "tsv", "parquet") else None,
            "parquet": parquet,
        },
        "steps": prepared.steps,
        "boundaries": {k: {"time": v, "utc": _utc(v)} for k, v in prepared.boundaries.items()},
        "splits": {name: split_stats(prepared.splits[name], prepared.n_items) for name in SPLITS},
    }
    with atomic_dir(out, PREPARE_OUTPUT) as tmp:
        write_outputs(prepared, tmp, stats, parquet)
        default_permissions(tmp)
    log.info("wrote %s (%.1f s)", out, time.perf_counter() - t0)
    return stats
