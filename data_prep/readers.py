"""Readers for raw click logs: YooChoose, Diginetica, OTTO, and generic CSV/TSV/Parquet.

Every reader streams its input a block at a time (pyarrow parses each block on every core) and
returns a `RawLog`: plain numpy arrays, one entry per event, that the pipeline in `data_prep.prepare`
works on without ever looping over sessions in Python. Memory is what the log keeps per event plus
one block, so an OTTO-size file (11 GB of JSON lines, 216 million events) reads within a few GB.

- Ids are text, kept exactly as written (data_prep.columns): a column of canonical integers stays
  int64 (`Ids.labels is None`, the codes *are* the ids, ordered numerically); any other id (0115,
  18446744073709551616, sku-7) makes the column text, coded in the order of the sorted texts, with
  the texts in `Ids.labels`; they are mapped back only when the output is written.
- Time is float64 Unix seconds (UTC). Naive ISO date-times are read as UTC.

Files may be plain, gzip-compressed (.gz) or a .zip archive holding exactly one file; compression is
recognised by its magic bytes, so a misnamed file still reads.
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

from data_prep.columns import Ids, IdColumn, TimeColumn, first_true, ticks_to_seconds
from gru4rec.foundation.errors import UserError
from gru4rec.foundation.memory import release_arrow_memory
from gru4rec.foundation.prefetch import prefetched

log = logging.getLogger(__name__)

FORMATS = ("auto", "yoochoose", "csv", "tsv", "parquet", "diginetica", "otto")
TIME_UNITS = ("auto", "s", "ms", "iso")
DIGINETICA_COLUMNS = ("session_id", "user_id", "item_id", "timeframe", "eventdate")

_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGIC = b"PK\x03\x04"
_YOOCHOOSE_LINE = re.compile(rb"^\s*[^,\s]+,\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z?,[^,]+,[^,]*\s*$")
_BLOCK_SIZE = 1 << 24  # 16 MiB: few, large blocks keep both cores busy with little overhead
_PARQUET_BATCH_ROWS = 1 << 21
_OTTO_HEAD = 1 << 20  # bytes whose lines tell the types of an OTTO file's fields


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


# --------------------------------------------------------------------------------------- streaming


def _csv_batches(path: Path, read: pacsv.ReadOptions, parse: pacsv.ParseOptions,
                 convert: pacsv.ConvertOptions) -> Iterator[pa.RecordBatch]:
    """The blocks of a delimited file; parse errors become one-line UserErrors naming the line."""
    try:
        with open_binary(path) as fh:
            # the next block is parsed while the caller encodes this one
            yield from prefetched(pacsv.open_csv(fh, read_options=read, parse_options=parse, convert_options=convert))
    except pa.ArrowInvalid as exc:
        text = str(exc)
        if "Empty CSV file" in text:
            raise UserError(f"{path}: empty file") from None
        if "Expected" in text and "columns" in text:
            where = _locate_bad_row(path, read, parse)
            if where:
                raise UserError(f"{path}: {where}") from None
        raise _arrow_error(path, exc) from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path}: cannot read ({exc})") from None


def _text_types(names) -> dict[str, pa.DataType]:
    return {name: pa.string() for name in names}


def _no_events(path: Path, rows: int, what: str = "no events (only a header)") -> None:
    if rows == 0:
        raise UserError(f"{path}: {what}")


# --------------------------------------------------------------------------------------- YooChoose


def read_yoochoose(path: Path) -> RawLog:
    """Raw `yoochoose-clicks.dat`: no header; session id, ISO time ending in Z, item id, category.

    Times are parsed natively by pyarrow; a file with other spellings of the time (no Z, offsets) is
    read again with the times as text, which also names the first line whose time is not one.
    """
    head = read_head(path, 4096)
    if not _first_line(head).strip():
        raise UserError(f"{path}: empty file")
    try:
        return _read_yoochoose(path, native_times=True)
    except _NotNative:
        return _read_yoochoose(path, native_times=False)


class _NotNative(Exception):
    """A YooChoose time pyarrow does not parse natively."""


def _read_yoochoose(path: Path, native_times: bool) -> RawLog:
    names = ["session", "time", "item", "category"]
    types = _text_types(["session", "item"]) | {"time": pa.timestamp("us", tz="UTC") if native_times else pa.string()}
    read = pacsv.ReadOptions(column_names=names, block_size=_BLOCK_SIZE, use_threads=True)
    parse = pacsv.ParseOptions(delimiter=",", quote_char=False)
    convert = pacsv.ConvertOptions(column_types=types, include_columns=names[:3], strings_can_be_null=False)

    def where(i: int) -> str:
        return f"{path}: line {i + 1}"

    session, item = IdColumn("session id", where), IdColumn("item id", where)
    time = TimeColumn("time", "iso", where, str(path))
    batches = _csv_batches(path, read, parse, convert)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            break
        except UserError as exc:
            if native_times and "conversion error" in str(exc) and "timestamp" in str(exc):
                raise _NotNative from None
            if "Expected" in str(exc) or "expected" in str(exc):
                raise UserError(f"{exc}; a YooChoose clicks file has 4 comma-separated fields per line: session "
                                f"id, time, item id, category") from None
            raise
        for column, ids, label in ((0, session, "session id"), (2, item, "item id")):
            _check_integers(batch.column(column), label, where, ids.rows)
            ids.add(batch.column(column))
        time.add(batch.column(1))
    _no_events(path, time.rows, "empty file")
    return RawLog(str(path), "yoochoose", item=item.finish(), time=time.finish(), session=session.finish(),
                  implicit_type="clicks")


def _check_integers(values: pa.Array, label: str, where, row0: int) -> None:
    """YooChoose ids are whole numbers (kept as the text they are written as)."""
    if pc.all(pc.ascii_is_decimal(values)).as_py():
        return
    ok = pc.match_substring_regex(values, r"^-?[0-9]+$")
    if not pc.all(ok).as_py():
        row = first_true(pc.invert(ok))
        raise UserError(f"{where(row0 + row)}: {label} {values[row].as_py()!r} is not an integer")


# --------------------------------------------------------------------------------------- Diginetica


def read_diginetica(path: Path) -> RawLog:
    """Diginetica `train-item-views.csv`: time = eventdate (UTC midnight) + timeframe milliseconds."""
    line = _first_line(read_head(path))
    if not line.strip():
        raise UserError(f"{path}: empty file")
    found = [c.strip() for c in line.decode("utf-8", "replace").split(";")]
    missing = [c for c in DIGINETICA_COLUMNS if c not in found]
    if missing:
        raise UserError(
            f"{path}: not a Diginetica train-item-views file: missing column(s) {', '.join(missing)} "
            f"(found: {', '.join(found)}; expected the ';'-separated header {';'.join(DIGINETICA_COLUMNS)})"
        )
    wanted = ["session_id", "item_id", "timeframe", "eventdate"]
    convert = pacsv.ConvertOptions(column_types=_text_types(wanted), include_columns=wanted, strings_can_be_null=True)

    def where(i: int) -> str:
        return f"{path}: row {i + 1} (line {i + 2})"

    session, item = IdColumn("session_id", where), IdColumn("item_id", where)
    time = TimeColumn("time", "ms", where, str(path))
    for batch in _csv_batches(path, pacsv.ReadOptions(block_size=_BLOCK_SIZE), pacsv.ParseOptions(delimiter=";"), convert):
        session.add(batch.column(0))
        item.add(batch.column(1))
        time.add_seconds(_diginetica_seconds(batch.column(2), batch.column(3), where, time.rows))
    _no_events(path, time.rows)
    return RawLog(str(path), "diginetica", item=item.finish(), time=time.finish(), session=session.finish(),
                  implicit_type="views")


def _diginetica_seconds(frames: pa.Array, dates: pa.Array, where, row0: int) -> np.ndarray:
    if frames.null_count:
        raise UserError(f"{where(row0 + first_true(frames.is_null()))}: empty timeframe")
    try:
        timeframe = pc.cast(frames, pa.int64()).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:
        ok = pc.ascii_is_decimal(frames)
        row = first_true(pc.invert(ok))
        raise UserError(f"{where(row0 + row)}: timeframe {frames[row].as_py()!r} is not a whole number of "
                        f"milliseconds") from None
    if dates.null_count:
        raise UserError(f"{where(row0 + first_true(dates.is_null()))}: empty eventdate")
    days = pc.strptime(dates, format="%Y-%m-%d", unit="s", error_is_null=True)
    if days.null_count:
        row = first_true(days.is_null())
        raise UserError(f"{where(row0 + row)}: eventdate {dates[row].as_py()!r} is not a date like 2016-05-09")
    day_ms = days.cast(pa.int64()).to_numpy(zero_copy_only=False) * 1000
    return ticks_to_seconds(day_ms + timeframe, "ms")


# --------------------------------------------------------------------------------------- OTTO


def read_otto(path: Path) -> RawLog:
    """OTTO JSON lines: {"session": int, "events": [{"aid": int, "ts": ms, "type": str}, ...]} per line."""
    schema = _otto_schema(path)
    block = _BLOCK_SIZE
    while True:
        try:
            return _read_otto(path, schema, block)
        except _LineTooLong:  # a line longer than a block: read again with blocks that hold it
            block *= 8


class _LineTooLong(Exception):
    """A JSON line does not fit in one block."""


def _read_otto(path: Path, schema: pa.Schema, block: int) -> RawLog:
    import pyarrow.json as pajson

    lines = _OttoLines(path)
    session, item = IdColumn("session", lines.where), IdColumn("aid", lines.where)
    event_type = IdColumn("type", lines.where, numbers_in_text=False)
    time = TimeColumn("ts", "ms", lines.where, str(path))
    options = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    try:
        with open_binary(path) as fh:
            blocks = pajson.open_json(fh, read_options=pajson.ReadOptions(block_size=block), parse_options=options)
            for batch in prefetched(blocks):  # the next block is parsed while this one is encoded
                events = lines.add(batch, time.rows)
                session.add(batch.column("session").take(pa.array(lines.parents)))
                item.add(events.field("aid"))
                time.add(events.field("ts"))
                event_type.add(events.field("type"))
    except pa.ArrowInvalid as exc:
        if "straddl" in str(exc) and block < 1 << 31:
            raise _LineTooLong from None
        raise _otto_error(path, exc) from None
    except (OSError, EOFError) as exc:
        raise UserError(f"{path}: cannot read ({exc})") from None
    if lines.count == 0:
        raise UserError(f"{path}: empty file")
    _no_events(path, time.rows, f"no events in {lines.count} session line(s)")
    return RawLog(str(path), "otto", item=item.finish(), time=time.finish(), session=session.finish(),
                  event_type=event_type.finish())


def _otto_schema(path: Path) -> pa.Schema:
    """The fields' types, from the first lines: ids that are JSON numbers are read as decimals (exact
    whatever their size, their text is the number's), ids written as strings stay strings."""
    import pyarrow.json as pajson

    head = read_head(path, _OTTO_HEAD)
    if not head.strip():
        raise UserError(f"{path}: empty file")
    head = head[: head.rfind(b"\n") + 1] or head
    try:
        found = pajson.read_json(io.BytesIO(head)).schema
    except pa.ArrowInvalid as exc:
        raise _otto_error(path, exc) from None
    missing = [c for c in ("session", "events") if c not in found.names]
    if missing:
        raise UserError(f"{path}: OTTO lines need the keys session and events; missing {', '.join(missing)} "
                        f"(found: {', '.join(found.names)})")
    events = found.field("events").type
    if not pa.types.is_list(events) or not pa.types.is_struct(events.value_type):
        raise UserError(f"{path}: 'events' must be a list of objects with aid, ts and type (found {events})")
    fields = {events.value_type.field(i).name: events.value_type.field(i).type for i in range(events.value_type.num_fields)}
    missing = [c for c in ("aid", "ts", "type") if c not in fields]
    if missing:
        raise UserError(f"{path}: OTTO events need the keys aid, ts and type; missing {', '.join(missing)} "
                        f"(found: {', '.join(fields)})")

    def exact(kind: pa.DataType) -> pa.DataType:
        return pa.decimal128(38, 0) if pa.types.is_integer(kind) or pa.types.is_floating(kind) else kind

    event = pa.struct([("aid", exact(fields["aid"])), ("ts", fields["ts"]), ("type", fields["type"])])
    return pa.schema([("session", exact(found.field("session").type)), ("events", pa.list_(event))])


class _OttoLines:
    """Which line each event of the current batch comes from (for messages and session ids)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0  # lines read so far
        self.lines0 = 0  # lines before the current batch
        self.first_event = 0
        self.parents = np.zeros(0, dtype=np.int64)

    def add(self, batch: pa.RecordBatch, first_event: int) -> pa.StructArray:
        events = batch.column("events")
        if batch.column("session").null_count:
            line = first_true(batch.column("session").is_null())
            raise UserError(f"{self.path}: line {self.count + line + 1}: session is missing or null")
        if events.null_count:
            raise UserError(f"{self.path}: line {self.count + first_true(events.is_null()) + 1}: events is missing or null")
        self.lines0, self.first_event = self.count, first_event
        self.parents = pc.list_parent_indices(events).to_numpy(zero_copy_only=False)
        self.count += batch.num_rows
        return pc.list_flatten(events)

    def where(self, i: int) -> str:
        local = i - self.first_event
        if 0 <= local < len(self.parents):
            return f"{self.path}: line {self.lines0 + int(self.parents[local]) + 1}"
        return f"{self.path}: event {i + 1}"


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


# --------------------------------------------------------------------------------------- generic


def read_delimited(path: Path, fmt: str, cols: ColumnMap) -> RawLog:
    """CSV (comma) or TSV (tab) with a header; columns chosen by name."""
    delimiter = "\t" if fmt == "tsv" else ","
    line = _first_line(read_head(path))
    if not line.strip():
        raise UserError(f"{path}: empty file")
    found = [c.strip().strip('"') for c in line.decode("utf-8", "replace").split(delimiter)]
    if len(found) == 1 and fmt in ("csv", "tsv"):
        other_delim = "\t" if fmt == "csv" else ","
        if other_delim in line.decode("utf-8", "replace"):
            raise UserError(
                f"{path}: the header {line[:80].decode('utf-8', 'replace')!r} has no "
                f"{'tab' if fmt == 'tsv' else 'comma'}; is it --format {'tsv' if fmt == 'csv' else 'csv'}?"
            )
    _check_columns(path, found, cols)
    read = pacsv.ReadOptions(block_size=_BLOCK_SIZE, use_threads=True)
    parse = pacsv.ParseOptions(delimiter=delimiter, quote_char='"' if fmt == "csv" else False)
    convert = pacsv.ConvertOptions(include_columns=cols.wanted(), column_types=_text_types(cols.wanted()),
                                   strings_can_be_null=False)

    def where(i: int) -> str:
        return f"{path}: row {i + 1} (line {i + 2})"

    log_columns = _LogColumns(path, cols, where, numbers_in_text=True)
    for batch in _csv_batches(path, read, parse, convert):
        log_columns.add(batch)
    _no_events(path, log_columns.time.rows)
    return log_columns.finish(fmt)


def read_parquet(path: Path, cols: ColumnMap) -> RawLog:
    import pyarrow.parquet as pq

    def where(i: int) -> str:
        return f"{path}: row {i + 1}"

    log_columns = _LogColumns(path, cols, where, numbers_in_text=False)
    try:
        if _compression(path) == "zip":
            with zipfile.ZipFile(path) as zf:
                source = pa.BufferReader(zf.read(_zip_member(path)))
        else:
            source = str(path)
        pf = pq.ParquetFile(source)
        _check_columns(path, pf.schema_arrow.names, cols)
        for batch in prefetched(pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=cols.wanted(), use_threads=True)):
            log_columns.add(batch)
    except UserError:
        raise
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"{path}: cannot read as Parquet ({str(exc).splitlines()[0]})") from None
    _no_events(path, log_columns.time.rows, "no events (the table is empty)")
    return log_columns.finish("parquet")


class _LogColumns:
    """The columns a ColumnMap names, filled batch by batch."""

    def __init__(self, path: Path, cols: ColumnMap, where, numbers_in_text: bool) -> None:
        self.path, self.cols = path, cols
        self.item = IdColumn(cols.item, where, numbers_in_text)
        self.time = TimeColumn(cols.time, cols.time_unit, where, str(path))
        self.owner = IdColumn(cols.user or cols.session, where, numbers_in_text)  # sessions, or users
        self.event_type = IdColumn(cols.type, where, numbers_in_text=False) if cols.type else None

    def add(self, batch: pa.RecordBatch) -> None:
        self.item.add(batch.column(self.cols.item))
        self.time.add(batch.column(self.cols.time))
        self.owner.add(batch.column(self.cols.user or self.cols.session))
        if self.event_type is not None:
            types = batch.column(self.cols.type)
            self.event_type.add(types if pa.types.is_string(types.type) else pc.cast(types, pa.string()))

    def finish(self, fmt: str) -> RawLog:
        owner = self.owner.finish()
        return RawLog(
            str(self.path), fmt, item=self.item.finish(), time=self.time.finish(),
            session=None if self.cols.user else owner, user=owner if self.cols.user else None,
            event_type=self.event_type.finish() if self.event_type is not None else None,
        )


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
