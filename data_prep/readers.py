"""Readers for raw click logs: YooChoose, Diginetica, OTTO, and generic CSV/TSV/Parquet.

Every reader returns a `RawLog`: plain numpy arrays (one entry per event) that the pipeline in
`data_prep.prepare` works on without ever looping over sessions in Python.

- Ids that are integers in the file stay int64 (`Ids.labels is None`, the codes *are* the ids).
- Ids that are strings are factorised early into int64 codes ordered like the sorted strings, with
  the strings kept in `Ids.labels`; they are mapped back only when the output is written.
- Time is float64 Unix seconds (UTC). Naive ISO date-times are read as UTC.

Files may be plain, gzip-compressed (.gz) or a .zip archive holding exactly one file; compression is
recognised by its magic bytes, so a misnamed file still reads. pyarrow does the parsing
(multi-threaded, timestamps parsed natively), which is what makes a 33-million-event log fast.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import logging
import os
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from gru4rec.foundation.errors import UserError
from gru4rec.foundation.memory import release_arrow_memory

log = logging.getLogger(__name__)

FORMATS = ("auto", "yoochoose", "csv", "tsv", "parquet", "diginetica", "otto")
TIME_UNITS = ("auto", "s", "ms", "iso")
DIGINETICA_COLUMNS = ("session_id", "user_id", "item_id", "timeframe", "eventdate")
# Numbers above this are taken as milliseconds by --time-unit auto (1e11 s is the year 5138,
# 1e11 ms is March 1973).
MS_THRESHOLD = 1e11

_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGIC = b"PK\x03\x04"
_YOOCHOOSE_LINE = re.compile(rb"^\s*[^,\s]+,\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z?,[^,]+,[^,]*\s*$")
_BLOCK_SIZE = 1 << 24  # 16 MiB: few, large blocks keep both cores busy with little overhead


@dataclass
class Ids:
    """One id column: int64 `codes` per event; `labels[code]` is the original id when they were strings."""

    codes: np.ndarray
    labels: pa.Array | None = None

    @property
    def is_int(self) -> bool:
        return self.labels is None

    def take(self, mask_or_index: np.ndarray) -> Ids:
        return Ids(self.codes[mask_or_index], self.labels)


@dataclass
class RawLog:
    """A raw click log, one array entry per event, in file order."""

    path: str
    format: str
    item: Ids
    time: np.ndarray  # float64 Unix seconds, UTC
    session: Ids | None = None
    user: Ids | None = None
    event_type: Ids | None = None  # labels are the type names
    implicit_type: str | None = None  # the one event type of formats without a type column

    def __len__(self) -> int:
        return int(self.time.shape[0])


# --------------------------------------------------------------------------------------- opening


def _compression(path: Path) -> str | None:
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic.startswith(_GZIP_MAGIC):
        return "gzip"
    if magic.startswith(_ZIP_MAGIC):
        return "zip"
    return None


def _zip_member(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as zf:
            names = [i.filename for i in zf.infolist() if not i.is_dir()]
    except zipfile.BadZipFile as exc:
        raise UserError(f"{path}: not a readable zip archive ({exc})") from None
    if len(names) != 1:
        raise UserError(
            f"{path}: a .zip input must hold exactly one file, found {len(names)}"
            + (f" ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})" if names else "")
        )
    return names[0]


def inner_name(path: Path) -> str:
    """The name of the data inside a compressed file (a.csv.gz -> a.csv; the zip member's name)."""
    comp = _compression(path)
    if comp == "zip":
        return Path(_zip_member(path)).name
    if comp == "gzip" and path.suffix.lower() == ".gz":
        return path.stem
    return path.name


@contextlib.contextmanager
def open_binary(path: Path) -> Iterator:
    """A binary stream of the decompressed content (pyarrow-native for plain and gzip files)."""
    comp = _compression(path)
    if comp == "zip":
        with zipfile.ZipFile(path) as zf, zf.open(_zip_member(path)) as fh:
            yield fh
    else:
        stream = pa.input_stream(str(path), compression=comp)
        try:
            yield stream
        finally:
            stream.close()


def read_head(path: Path, n_bytes: int = 65536) -> bytes:
    """The first `n_bytes` of the decompressed content (for sniffing formats and headers)."""
    comp = _compression(path)
    try:
        if comp == "zip":
            with zipfile.ZipFile(path) as zf, zf.open(_zip_member(path)) as fh:
                return fh.read(n_bytes)
        if comp == "gzip":
            with gzip.open(path, "rb") as fh:
                return fh.read(n_bytes)
        with open(path, "rb") as fh:
            return fh.read(n_bytes)
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path}: cannot read ({exc})") from None


def _first_line(head: bytes) -> bytes:
    line = head.split(b"\n", 1)[0]
    return line.rstrip(b"\r").lstrip(b"\xef\xbb\xbf")


# --------------------------------------------------------------------------------------- detection


def detect_format(path: Path) -> str:
    """Guess the input format from the file name, then from the first line; UserError if unsure."""
    name = inner_name(path).lower()
    if name.endswith(".parquet") or name.endswith(".pq"):
        return "parquet"
    head = read_head(path)
    if head.startswith(b"PAR1"):
        return "parquet"
    line = _first_line(head)
    if not line.strip():
        raise UserError(f"{path}: empty file")
    if name.endswith((".jsonl", ".ndjson", ".json")) or line.lstrip().startswith(b"{"):
        return "otto"
    if line.strip().lower() == b";".join(c.encode() for c in DIGINETICA_COLUMNS):
        return "diginetica"
    if _YOOCHOOSE_LINE.match(line) or (name.endswith(".dat") and line.count(b",") == 3):
        return "yoochoose"
    if name.endswith(".tsv") or (b"\t" in line and not name.endswith(".csv")):
        return "tsv"
    if name.endswith(".csv") or b"," in line:
        return "csv"
    raise UserError(
        f"{path}: cannot tell the input format from the file name or its first line "
        f"({line[:80].decode('utf-8', 'replace')!r}); pass --format yoochoose|csv|tsv|parquet|diginetica|otto"
    )


# --------------------------------------------------------------------------------------- helpers


def _to_numpy(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    if isinstance(col, pa.ChunkedArray):
        if col.num_chunks == 1:
            col = col.chunk(0)
        elif col.num_chunks == 0:
            return np.empty(0, dtype=col.type.to_pandas_dtype())
        else:
            col = col.combine_chunks()
    return col.to_numpy(zero_copy_only=False)


def _first_true(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _ids(col: pa.ChunkedArray, name: str, where) -> Ids:
    """int64 ids stay ids; anything else is factorised to codes ordered like the sorted strings."""
    if col.null_count:
        row = _first_true(_to_numpy(col.is_null()))
        raise UserError(f"{where(row)}: empty {name}")
    t = col.type
    if pa.types.is_integer(t):
        return Ids(_to_numpy(col.cast(pa.int64())).astype(np.int64, copy=False))
    if pa.types.is_floating(t):
        values = _to_numpy(col)
        if np.all(np.isfinite(values)) and np.all(values == np.round(values)) and np.all(np.abs(values) < 2**53):
            return Ids(values.astype(np.int64))
    if pa.types.is_dictionary(t):
        col = col.cast(t.value_type)
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        col = col.cast(pa.string())
    empty = pc.equal(pc.utf8_length(col), 0)
    if pc.any(empty).as_py():
        raise UserError(f"{where(_first_true(_to_numpy(empty)))}: empty {name}")
    encoded = col.dictionary_encode()
    if encoded.num_chunks == 0:
        return Ids(np.empty(0, np.int64), pa.array([], pa.string()))
    dictionary = encoded.chunk(0).dictionary
    order = np.asarray(pc.sort_indices(dictionary), dtype=np.int64)
    rank = np.empty_like(order)
    rank[order] = np.arange(order.shape[0], dtype=np.int64)
    indices = np.concatenate(
        [np.asarray(c.indices.to_numpy(zero_copy_only=False), dtype=np.int64) for c in encoded.chunks]
    )
    return Ids(rank[indices], dictionary.take(pa.array(order)))


def ticks_to_seconds(ticks: np.ndarray, unit: str) -> np.ndarray:
    """int64 ticks since the epoch -> float64 seconds, correctly rounded (so 1396867869277 ms -> 1396867869.277)."""
    per_second = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[unit]
    ticks = np.asarray(ticks, dtype=np.int64)
    if per_second == 1:
        return ticks.astype(np.float64)
    if np.all(np.abs(ticks) < 2**53):
        return ticks / np.float64(per_second)  # both exact in float64: one correctly rounded division
    whole, frac = np.divmod(ticks, per_second)
    return whole.astype(np.float64) + frac / np.float64(per_second)


def _timestamp_seconds(col: pa.ChunkedArray) -> np.ndarray:
    t = col.type
    if pa.types.is_date(t):
        col = col.cast(pa.timestamp("s"))
        t = col.type
    ticks = _to_numpy(col.cast(pa.int64()))
    return ticks_to_seconds(ticks, t.unit)


def _parse_iso(values: np.ndarray, name: str, where) -> np.ndarray:
    """ISO-8601 strings -> float seconds; naive times are UTC; the first bad value is reported."""
    import pandas as pd

    parsed = pd.to_datetime(pd.Series(values, dtype=object), utc=True, format="ISO8601", errors="coerce")
    bad = parsed.isna().to_numpy()
    if bad.any():
        row = _first_true(bad)
        raise UserError(
            f"{where(row)}: {name} {values[row]!r} is not a time (expected Unix seconds, milliseconds or an "
            f"ISO-8601 date-time like 2014-04-07T10:51:09.277Z)"
        )
    ns = parsed.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy().astype("datetime64[ns]").astype(np.int64)
    return ticks_to_seconds(ns, "ns")


def _numeric_seconds(values: np.ndarray, unit: str, name: str, source: str) -> np.ndarray:
    values = np.asarray(values)
    if unit == "auto":
        finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
        biggest = float(np.max(np.abs(finite))) if finite.size else 0.0
        unit = "ms" if biggest > MS_THRESHOLD else "s"
        log.info("%s: column %s read as Unix %s (largest value %.0f)", source, name,
                 "milliseconds" if unit == "ms" else "seconds", biggest)
    if values.dtype.kind in "iu":
        return ticks_to_seconds(values.astype(np.int64), unit)
    values = values.astype(np.float64)
    return values / 1000.0 if unit == "ms" else values


def parse_time_column(col: pa.ChunkedArray, name: str, unit: str, where, source: str) -> np.ndarray:
    """A time column of any type -> float64 Unix seconds, following --time-unit (auto|s|ms|iso)."""
    if col.null_count:
        row = _first_true(_to_numpy(col.is_null()))
        raise UserError(f"{where(row)}: empty {name}")
    t = col.type
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        if unit in ("s", "ms"):
            log.info("%s: column %s holds date-times; --time-unit %s does not apply", source, name, unit)
        return _timestamp_seconds(col)
    if pa.types.is_integer(t) or pa.types.is_floating(t):
        if unit == "iso":
            raise UserError(
                f"{source}: column {name} holds numbers, not ISO-8601 date-times; use --time-unit s, ms or auto"
            )
        values = _to_numpy(col)
        if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
            row = _first_true(~np.isfinite(values))
            raise UserError(f"{where(row)}: {name} {values[row]!r} is not a finite number")
        return _numeric_seconds(values, unit, name, source)
    import pandas as pd

    strings = _to_numpy(col.cast(pa.string()))
    numbers = pd.to_numeric(pd.Series(strings, dtype=object), errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(numbers)
    if unit == "iso":
        if not bad.any():
            raise UserError(
                f"{source}: column {name} holds numbers, not ISO-8601 date-times; use --time-unit s, ms or auto"
            )
        return _parse_iso(strings, name, where)
    if not bad.any():
        return _numeric_seconds(numbers, unit, name, source)
    if unit in ("s", "ms") or not bad[0]:  # numbers (at least the first value is one) with a stray text
        row = _first_true(bad)
        raise UserError(
            f"{where(row)}: {name} {strings[row]!r} is not a number"
            + (f" (--time-unit {unit})" if unit != "auto" else " (the column holds Unix times)")
        )
    return _parse_iso(strings, name, where)


def _arrow_error(path: Path, exc: Exception) -> UserError:
    msg = str(exc).split("\n")[0]
    return UserError(f"{path}: cannot parse ({msg})")


def _locate_bad_row(path: Path, read_options, parse_options) -> str | None:
    """Re-read single-threaded to find the first row with the wrong number of fields."""
    found: list[str] = []

    def handler(row):
        found.append(
            f"line {row.number}: expected {row.expected_columns} fields, found {row.actual_columns} "
            f"({row.text[:80]!r})" if row.number is not None else
            f"expected {row.expected_columns} fields, found {row.actual_columns} ({row.text[:80]!r})"
        )
        return "skip"

    po = pacsv.ParseOptions(
        delimiter=parse_options.delimiter,
        quote_char=parse_options.quote_char,
        invalid_row_handler=handler,
    )
    ro = pacsv.ReadOptions(
        use_threads=False,
        block_size=read_options.block_size,
        column_names=read_options.column_names,
        autogenerate_column_names=read_options.autogenerate_column_names,
        skip_rows=read_options.skip_rows,
    )
    co = pacsv.ConvertOptions(column_types={}, strings_can_be_null=False)
    try:
        with open_binary(path) as fh:
            reader = pacsv.open_csv(fh, read_options=ro, parse_options=po, convert_options=co)
            for _batch in reader:
                if found:
                    break
    except (pa.ArrowInvalid, OSError):
        return None
    return found[0] if found else None


def _read_csv_table(path: Path, read_options, parse_options, convert_options) -> pa.Table:
    try:
        with open_binary(path) as fh:
            return pacsv.read_csv(fh, read_options=read_options, parse_options=parse_options,
                                  convert_options=convert_options)
    except pa.ArrowInvalid as exc:
        text = str(exc)
        if "Empty CSV file" in text:
            raise UserError(f"{path}: empty file") from None
        if "Expected" in text and "columns" in text:
            where = _locate_bad_row(path, read_options, parse_options)
            if where:
                raise UserError(f"{path}: {where}") from None
        raise _arrow_error(path, exc) from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path}: cannot read ({exc})") from None


# --------------------------------------------------------------------------------------- YooChoose


def read_yoochoose(path: Path) -> RawLog:
    """Raw `yoochoose-clicks.dat`: no header; session id, ISO time ending in Z, item id, category."""
    names = ["session", "time", "item", "category"]
    ro = pacsv.ReadOptions(column_names=names, block_size=_BLOCK_SIZE, use_threads=True)
    po = pacsv.ParseOptions(delimiter=",", quote_char=False)
    co = pacsv.ConvertOptions(
        column_types={"session": pa.int64(), "time": pa.timestamp("us", tz="UTC"), "item": pa.int64()},
        include_columns=["session", "time", "item"],
    )
    head = read_head(path, 4096)
    if not _first_line(head).strip():
        raise UserError(f"{path}: empty file")
    try:
        with open_binary(path) as fh:
            table = pacsv.read_csv(fh, read_options=ro, parse_options=po, convert_options=co)
    except pa.ArrowInvalid as exc:
        # Something did not convert natively: the slow path names the first bad line and field,
        # or reads times pyarrow does not take (no Z, other offsets) through pandas.
        return _read_yoochoose_slow(path, exc)
    except (OSError, EOFError) as exc:
        raise UserError(f"{path}: cannot read ({exc})") from None
    if table.num_rows == 0:
        raise UserError(f"{path}: empty file")

    def where(i: int) -> str:
        return f"{path}: line {i + 1}"

    session = _ids(table.column("session"), "session id", where)
    item = _ids(table.column("item"), "item id", where)
    time = _timestamp_seconds(table.column("time"))
    return RawLog(str(path), "yoochoose", item=item, time=time, session=session, implicit_type="clicks")


def _read_yoochoose_slow(path: Path, exc: Exception) -> RawLog:
    names = ["session", "time", "item", "category"]
    text = str(exc)
    if "Expected" in text and "columns" in text:
        ro = pacsv.ReadOptions(column_names=names, block_size=_BLOCK_SIZE)
        where = _locate_bad_row(path, ro, pacsv.ParseOptions(delimiter=",", quote_char=False))
        raise UserError(
            f"{path}: {where or text.splitlines()[0]}; a YooChoose clicks file has 4 comma-separated fields "
            f"per line: session id, time, item id, category"
        )
    ro = pacsv.ReadOptions(column_names=names, block_size=_BLOCK_SIZE)
    po = pacsv.ParseOptions(delimiter=",", quote_char=False)
    co = pacsv.ConvertOptions(column_types={c: pa.string() for c in names}, strings_can_be_null=False,
                              include_columns=names[:3])
    try:
        with open_binary(path) as fh:
            table = pacsv.read_csv(fh, read_options=ro, parse_options=po, convert_options=co)
    except pa.ArrowInvalid:
        raise _arrow_error(path, exc) from None

    def where(i: int) -> str:
        return f"{path}: line {i + 1}"

    ids = {}
    for col, label in (("session", "session id"), ("item", "item id")):
        values = _to_numpy(table.column(col))
        as_int = _maybe_int(table.column(col))
        if not pa.types.is_integer(as_int.type):
            ok = np.array([v.lstrip("-").isdigit() for v in values], dtype=bool)
            row = _first_true(~ok)
            raise UserError(f"{where(row)}: {label} {values[row]!r} is not an integer")
        ids[col] = _ids(as_int, label, where)
    time = _parse_iso(_to_numpy(table.column("time")), "time", where)
    return RawLog(str(path), "yoochoose", item=ids["item"], time=time, session=ids["session"], implicit_type="clicks")


# --------------------------------------------------------------------------------------- Diginetica


def read_diginetica(path: Path) -> RawLog:
    """Diginetica `train-item-views.csv`: time = eventdate (UTC midnight) + timeframe milliseconds."""
    head = read_head(path)
    line = _first_line(head)
    if not line.strip():
        raise UserError(f"{path}: empty file")
    found = [c.strip() for c in line.decode("utf-8", "replace").split(";")]
    missing = [c for c in DIGINETICA_COLUMNS if c not in found]
    if missing:
        raise UserError(
            f"{path}: not a Diginetica train-item-views file: missing column(s) {', '.join(missing)} "
            f"(found: {', '.join(found)}; expected the ';'-separated header {';'.join(DIGINETICA_COLUMNS)})"
        )
    ro = pacsv.ReadOptions(block_size=_BLOCK_SIZE)
    po = pacsv.ParseOptions(delimiter=";")
    co = pacsv.ConvertOptions(
        column_types={"session_id": pa.string(), "item_id": pa.string(), "timeframe": pa.string(),
                      "eventdate": pa.string()},
        include_columns=["session_id", "item_id", "timeframe", "eventdate"],
        strings_can_be_null=True,
    )
    table = _read_csv_table(path, ro, po, co)
    if table.num_rows == 0:
        raise UserError(f"{path}: no events (only a header)")

    def where(i: int) -> str:
        return f"{path}: row {i + 1} (line {i + 2})"

    session = _ids(_maybe_int(table.column("session_id")), "session_id", where)
    item = _ids(_maybe_int(table.column("item_id")), "item_id", where)
    frame_col = table.column("timeframe")
    if frame_col.null_count:
        raise UserError(f"{where(_first_true(_to_numpy(frame_col.is_null())))}: empty timeframe")
    frames = _to_numpy(frame_col)
    try:
        timeframe = _to_numpy(pc.cast(frame_col, pa.int64()))
    except pa.ArrowInvalid:
        ok = np.array([s.isdigit() for s in frames])
        row = _first_true(~ok)
        raise UserError(f"{where(row)}: timeframe {frames[row]!r} is not a whole number of milliseconds") from None
    date_col = table.column("eventdate")
    if date_col.null_count:
        raise UserError(f"{where(_first_true(_to_numpy(date_col.is_null())))}: empty eventdate")
    days = pc.strptime(date_col, format="%Y-%m-%d", unit="s", error_is_null=True)
    if days.null_count:
        row = _first_true(_to_numpy(days.is_null()))
        raise UserError(f"{where(row)}: eventdate {_to_numpy(date_col)[row]!r} is not a date like 2016-05-09")
    day_ms = _to_numpy(days.cast(pa.int64())) * 1000
    time = ticks_to_seconds(day_ms + timeframe, "ms")
    return RawLog(str(path), "diginetica", item=item, time=time, session=session, implicit_type="views")


def _maybe_int(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """Cast a string column to int64 when every value is an integer (ids are usually numbers)."""
    if col.null_count:
        return col
    try:
        return pc.cast(col, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return col


# --------------------------------------------------------------------------------------- OTTO


def read_otto(path: Path) -> RawLog:
    """OTTO JSON lines: {"session": int, "events": [{"aid": int, "ts": ms, "type": str}, ...]} per line."""
    import pyarrow.json as pajson

    head = read_head(path, 4096)
    if not head.strip():
        raise UserError(f"{path}: empty file")
    try:
        with open_binary(path) as fh:
            table = pajson.read_json(fh, read_options=pajson.ReadOptions(block_size=_BLOCK_SIZE))
    except pa.ArrowInvalid as exc:
        raise _otto_error(path, exc) from None
    except (OSError, EOFError) as exc:
        raise UserError(f"{path}: cannot read ({exc})") from None
    if table.num_rows == 0:
        raise UserError(f"{path}: empty file")
    fields = table.column_names
    missing = [c for c in ("session", "events") if c not in fields]
    if missing:
        raise UserError(
            f"{path}: OTTO lines need the keys session and events; missing {', '.join(missing)} "
            f"(found: {', '.join(fields)})"
        )
    events = table.column("events")
    if not pa.types.is_list(events.type) or not pa.types.is_struct(events.type.value_type):
        raise UserError(f"{path}: 'events' must be a list of objects with aid, ts and type (found {events.type})")
    names = [events.type.value_type.field(i).name for i in range(events.type.value_type.num_fields)]
    missing = [c for c in ("aid", "ts", "type") if c not in names]
    if missing:
        raise UserError(
            f"{path}: OTTO events need the keys aid, ts and type; missing {', '.join(missing)} "
            f"(found: {', '.join(names)})"
        )
    if events.null_count:
        line = _first_true(_to_numpy(events.is_null()))
        raise UserError(f"{path}: line {line + 1}: events is missing or null")
    parents = np.concatenate([np.asarray(pc.list_parent_indices(c).to_numpy(), dtype=np.int64)
                              for c in events.chunks]) if events.num_chunks else np.empty(0, np.int64)
    offsets = np.cumsum([0] + [len(c) for c in events.chunks[:-1]]) if events.num_chunks else []
    if events.num_chunks > 1:
        sizes = [len(pc.list_flatten(c)) for c in events.chunks]
        parents = parents + np.repeat(np.asarray(offsets, dtype=np.int64), sizes)
    flat = pa.chunked_array([pc.list_flatten(c) for c in events.chunks], type=events.type.value_type)
    n_lines = table.num_rows

    def where(i: int) -> str:
        return f"{path}: line {int(parents[i]) + 1}"

    if len(flat) == 0:
        raise UserError(f"{path}: no events in {n_lines} session line(s)")
    aid = pa.chunked_array([c.field("aid") for c in flat.chunks])
    ts = pa.chunked_array([c.field("ts") for c in flat.chunks])
    typ = pa.chunked_array([c.field("type") for c in flat.chunks])
    sess_col = table.column("session")
    if sess_col.null_count:
        raise UserError(f"{path}: line {_first_true(_to_numpy(sess_col.is_null())) + 1}: session is missing or null")
    sessions_per_line = _ids(sess_col, "session", lambda i: f"{path}: line {i + 1}")
    session = Ids(sessions_per_line.codes[parents], sessions_per_line.labels)
    item = _ids(aid, "aid", where)
    if ts.null_count:
        raise UserError(f"{where(_first_true(_to_numpy(ts.is_null())))}: an event has no ts")
    if not pa.types.is_integer(ts.type):
        time = parse_time_column(ts, "ts", "ms", where, str(path))
    else:
        time = ticks_to_seconds(_to_numpy(ts.cast(pa.int64())), "ms")
    event_type = _ids(typ, "type", where)
    return RawLog(str(path), "otto", item=item, time=time, session=session, event_type=event_type)


def _otto_error(path: Path, exc: Exception) -> UserError:
    try:
        with open_binary(path) as fh:
            for i, raw in enumerate(io.TextIOWrapper(fh, encoding="utf-8", errors="replace")):
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw)
                except json.JSONDecodeError as err:
                    return UserError(f"{path}: line {i + 1}: not valid JSON ({err.msg} at column {err.colno})")
                if not isinstance(obj, dict):
                    return UserError(f"{path}: line {i + 1}: expected a JSON object per line")
    except (OSError, EOFError):
        pass
    return _arrow_error(path, exc)


# --------------------------------------------------------------------------------------- generic


@dataclass
class ColumnMap:
    session: str | None = "SessionId"
    item: str = "ItemId"
    time: str = "Time"
    user: str | None = None
    type: str | None = None
    time_unit: str = "auto"

    def wanted(self) -> list[str]:
        cols = [self.item, self.time]
        if self.user:
            cols.insert(0, self.user)
        elif self.session:
            cols.insert(0, self.session)
        if self.type:
            cols.append(self.type)
        return cols


def _check_columns(path: Path, found: list[str], cols: ColumnMap) -> None:
    options = {cols.item: "--item-col", cols.time: "--time-col"}
    if cols.user:
        options[cols.user] = "--user-col"
    elif cols.session:
        options[cols.session] = "--session-col"
    if cols.type:
        options[cols.type] = "--type-col"
    missing = [f"{c!r} ({opt})" for c, opt in options.items() if c not in found]
    if missing:
        hint = ""
        if cols.session and cols.session not in found and not cols.user:
            hint = ("; pass --session-col NAME, or --user-col NAME to build sessions from a user id by the "
                    "inactivity gap")
        raise UserError(
            f"{path}: column(s) {', '.join(missing)} not found; the file has the columns: "
            f"{', '.join(found) or 'none'}{hint}"
        )


def read_delimited(path: Path, fmt: str, cols: ColumnMap) -> RawLog:
    """CSV (comma) or TSV (tab) with a header; columns chosen by name."""
    delimiter = "\t" if fmt == "tsv" else ","
    head = read_head(path)
    line = _first_line(head)
    if not line.strip():
        raise UserError(f"{path}: empty file")
    found = [c.strip().strip('"') for c in line.decode("utf-8", "replace").split(delimiter)]
    if len(found) == 1 and fmt in ("csv", "tsv"):
        other = "tsv" if fmt == "csv" else "csv"
        other_delim = "\t" if other == "tsv" else ","
        if other_delim in line.decode("utf-8", "replace"):
            raise UserError(
                f"{path}: the header {line[:80].decode('utf-8', 'replace')!r} has no "
                f"{'tab' if fmt == 'tsv' else 'comma'}; is it --format {other}?"
            )
    _check_columns(path, found, cols)
    wanted = cols.wanted()
    types: dict[str, pa.DataType] = {}
    if cols.time_unit == "iso":
        types[cols.time] = pa.string()
    if cols.type:
        types[cols.type] = pa.string()
    ro = pacsv.ReadOptions(block_size=_BLOCK_SIZE, use_threads=True)
    po = pacsv.ParseOptions(delimiter=delimiter, quote_char='"' if fmt == "csv" else False)
    co = pacsv.ConvertOptions(include_columns=wanted, column_types=types, strings_can_be_null=False)
    table = _read_csv_table(path, ro, po, co)
    if table.num_rows == 0:
        raise UserError(f"{path}: no events (only a header)")

    def where(i: int) -> str:
        return f"{path}: row {i + 1} (line {i + 2})"

    return _from_table(path, fmt, table, cols, where)


def read_parquet(path: Path, cols: ColumnMap) -> RawLog:
    import pyarrow.parquet as pq

    try:
        if _compression(path) == "zip":
            with zipfile.ZipFile(path) as zf:
                source = pa.BufferReader(zf.read(_zip_member(path)))
        else:
            source = str(path)
        pf = pq.ParquetFile(source)
        found = pf.schema_arrow.names
        _check_columns(path, found, cols)
        table = pf.read(columns=cols.wanted(), use_threads=True)
    except UserError:
        raise
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{path}: cannot read as Parquet ({str(exc).splitlines()[0]})") from None
    if table.num_rows == 0:
        raise UserError(f"{path}: no events (the table is empty)")

    def where(i: int) -> str:
        return f"{path}: row {i + 1}"

    return _from_table(path, "parquet", table, cols, where)


def _from_table(path: Path, fmt: str, table: pa.Table, cols: ColumnMap, where) -> RawLog:
    item = _ids(table.column(cols.item), f"{cols.item}", where)
    time = parse_time_column(table.column(cols.time), cols.time, cols.time_unit, where, str(path))
    session = user = event_type = None
    if cols.user:
        user = _ids(table.column(cols.user), cols.user, where)
    else:
        session = _ids(table.column(cols.session), cols.session, where)
    if cols.type:
        event_type = _ids(table.column(cols.type).cast(pa.string()), cols.type, where)
    return RawLog(str(path), fmt, item=item, time=time, session=session, user=user, event_type=event_type)


# --------------------------------------------------------------------------------------- entry point


def read_log(path: str | os.PathLike[str], fmt: str = "auto", cols: ColumnMap | None = None) -> RawLog:
    """Read a raw click log in any supported format (see module docstring)."""
    path = Path(path)
    cols = cols or ColumnMap()
    if not path.exists():
        raise UserError(f"{path}: file not found")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a click log file")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file")
    if fmt not in FORMATS:
        raise UserError(f"unknown --format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if cols.time_unit not in TIME_UNITS:
        raise UserError(f"unknown --time-unit {cols.time_unit!r}; choose one of {', '.join(TIME_UNITS)}")
    if fmt == "auto":
        fmt = detect_format(path)
        log.info("%s: detected format %s", path, fmt)
    if fmt in ("yoochoose", "diginetica", "otto") and (cols.user or cols.type):
        raise UserError(
            f"--user-col/--type-col apply to csv, tsv and parquet input only; {fmt} files have fixed columns"
        )
    if fmt == "yoochoose":
        raw = read_yoochoose(path)
    elif fmt == "diginetica":
        raw = read_diginetica(path)
    elif fmt == "otto":
        raw = read_otto(path)
    elif fmt == "parquet":
        raw = read_parquet(path, cols)
    else:
        raw = read_delimited(path, fmt, cols)
    release_arrow_memory()  # the parser's blocks stay cached otherwise
    return raw
