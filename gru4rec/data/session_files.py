"""Prepared session files: TSV with the header `SessionId ItemId Time` (the authors' format) or Parquet.

Every part of the project reads and writes them through this module. Reading is columnar and
streamed (pyarrow parses the file in blocks on every core): ids stay text but are dictionary-encoded
as they are read, so a file of tens of millions of events never becomes a Python object per event.
"""

from __future__ import annotations

import contextlib
import gzip
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from gru4rec.data.ids import ItemCodes, SessionRuns, concatenate
from gru4rec.foundation.atomic import atomic_file
from gru4rec.foundation.errors import UserError
from gru4rec.foundation.memory import release_arrow_memory
from gru4rec.foundation.prefetch import prefetched

COLUMNS = ("SessionId", "ItemId", "Time")

_BLOCK_SIZE = 1 << 24  # bytes of text per parsed block: a few large blocks keep every core busy
_PARQUET_BATCH_ROWS = 1 << 20
# what pyarrow decompresses while streaming; .zip and .xz go through Python's readers
_STREAM_CODECS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".lz4": "lz4"}


@dataclass
class SessionColumns:
    """A session file's columns in file order: one array entry per event, no Python object per event.

    Ids stay text. Each id column is dictionary-encoded once: `session` and `item` hold int32 codes,
    numbered in order of first appearance in the file, and `session_ids[code]` / `item_ids[code]`
    is the id as written (an Arrow string array).
    """

    session: np.ndarray
    session_ids: pa.Array
    item: np.ndarray
    item_ids: pa.Array
    time: np.ndarray  # float64 Unix seconds

    def __len__(self) -> int:
        return int(self.time.shape[0])

    @classmethod
    def from_frame(cls, df: pd.DataFrame) -> SessionColumns:
        """The columns of an in-memory frame (ids taken as their text), for tools and tests."""
        builder = _ColumnBuilder(Path("<frame>"))
        builder.add(*(pa.array(df[c].astype(str).to_numpy()) for c in COLUMNS[:2]), pa.array(df["Time"]))
        return builder.finish()


def read_session_columns(path: str | os.PathLike[str]) -> SessionColumns:
    """Read a prepared session file: TSV (optionally .gz/.bz2/.zst/.lz4/.xz/.zip) or Parquet (.parquet).

    Every reading path of the project (training, evaluation, baselines, tuning, warm start) starts
    here. Bad input is a UserError naming the file, and the row where there is one.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file not found")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a session file")
    builder = _ColumnBuilder(path)
    batches = _parquet_batches(path) if path.suffix == ".parquet" else _tsv_batches(path)
    try:
        for session, item, time in prefetched(batches):  # the next block is decoded while this one is encoded
            builder.add(session, item, time)
    except (pa.ArrowException, OSError, EOFError, ValueError) as exc:
        raise _read_error(path, exc) from None
    return builder.finish()


def read_session_file(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A prepared session file as a DataFrame (SessionId and ItemId as str, Time float64), for small files.

    The library itself works on read_session_columns; this builds one Python string per event.
    """
    cols = read_session_columns(path)
    return pa.table(
        {"SessionId": cols.session_ids.take(pa.array(cols.session)), "ItemId": cols.item_ids.take(pa.array(cols.item)),
         "Time": cols.time}
    ).to_pandas()


def _read_error(path: Path, exc: BaseException) -> UserError:
    lines = str(exc).strip().splitlines()
    message = lines[0] if lines else type(exc).__name__
    if isinstance(exc, EOFError) or any(word in message.lower() for word in ("truncated", "inflate", "compressed")):
        return UserError(f"{path}: the compressed file is truncated or damaged ({message})")
    return UserError(f"{path}: cannot read as a session file ({message})")


@contextlib.contextmanager
def _open_stream(path: Path) -> Iterator:
    """The decompressed bytes of a TSV file; compression by name, and gzip also by its magic bytes."""
    suffix = path.suffix.lower()
    if suffix == ".zip":
        import zipfile

        with zipfile.ZipFile(path) as archive:
            names = [i.filename for i in archive.infolist() if not i.is_dir()]
            if len(names) != 1:
                raise UserError(f"{path}: a .zip session file must hold exactly one file, found {len(names)}")
            with archive.open(names[0]) as fh:
                yield fh
        return
    if suffix == ".xz":
        import lzma

        with lzma.open(path, "rb") as fh:
            yield fh
        return
    codec = _STREAM_CODECS.get(suffix)
    if codec is None:
        with open(path, "rb") as fh:
            codec = "gzip" if fh.read(2) == b"\x1f\x8b" else None
    stream = pa.input_stream(str(path), compression=codec)
    try:
        yield stream
    finally:
        stream.close()


def _check_header(path: Path) -> None:
    with _open_stream(path) as stream:
        head = stream.read(1 << 16)
    line = head.split(b"\n", 1)[0].rstrip(b"\r").removeprefix(b"\xef\xbb\xbf").decode("utf-8", "replace")
    if not line.strip():
        raise UserError(f"{path}: empty file, expected a session file with the header 'SessionId<TAB>ItemId<TAB>Time'")
    found = [name.strip('"') for name in line.split("\t")]
    missing = [c for c in COLUMNS if c not in found]
    if missing:
        raise UserError(
            f"{path}: missing column(s) {', '.join(missing)}; a session file needs the header "
            f"'SessionId<TAB>ItemId<TAB>Time' (found: {', '.join(found)})"
        )


def _tsv_batches(path: Path) -> Iterator[tuple[pa.Array, pa.Array, pa.Array]]:
    import pyarrow.csv as pacsv

    _check_header(path)
    read = pacsv.ReadOptions(block_size=_BLOCK_SIZE)
    parse = pacsv.ParseOptions(delimiter="\t")
    # Every column as text: the parser only splits, and Time is converted as each batch is encoded
    # (a bad value is then named by its row), on the other core than the parsing of the next block.
    convert = pacsv.ConvertOptions(include_columns=list(COLUMNS), column_types={c: pa.string() for c in COLUMNS},
                                   strings_can_be_null=False)
    with _open_stream(path) as stream:
        for batch in pacsv.open_csv(stream, read_options=read, parse_options=parse, convert_options=convert):
            yield batch.column(0), batch.column(1), batch.column(2)


def _first_unparsable(text: pa.Array) -> int | None:
    """Index of the first string that does not parse as a float (bisection: no Python object per value)."""
    def parses(part: pa.Array) -> bool:
        try:
            pc.cast(part, pa.float64())
            return True
        except pa.ArrowInvalid:
            return False

    if parses(text):
        return None
    lo, hi = 0, len(text)  # text[lo:hi] holds the first bad value
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if parses(text.slice(lo, mid - lo)):
            lo = mid
        else:
            hi = mid
    return lo


def _parquet_batches(path: Path) -> Iterator[tuple[pa.Array, pa.Array, pa.Array]]:
    import pyarrow.parquet as pq

    source = pq.ParquetFile(path)
    found = source.schema_arrow.names
    missing = [c for c in COLUMNS if c not in found]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(found) or 'nothing'})")
    for batch in source.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=list(COLUMNS)):
        yield batch.column(0), batch.column(1), batch.column(2)


class _ColumnBuilder:
    """Checks the batches of one file and encodes them as they come: ids to codes, times to float64."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows = 0
        self.sessions = SessionRuns()
        self.items = ItemCodes()
        self.times: list[np.ndarray] = []

    def _row(self, index: int) -> str:
        return f"{self.path}: row {self.rows + index + 2}"  # +1 for the header, +1 one-based

    def add(self, session: pa.Array, item: pa.Array, time: pa.Array) -> None:
        if len(time) == 0:
            return
        session, item = self._ids(session, "SessionId"), self._ids(item, "ItemId")
        time = self._times(time)
        self.sessions.add(session)
        self.items.add(item)
        self.times.append(time)
        self.rows += len(time)
        # the parsed block is copied out: hand its memory back before the next one is decoded (every
        # block: with the next one read ahead, holding them for a few blocks cost 0.3 GB of peak)
        release_arrow_memory()

    def _ids(self, ids: pa.Array, name: str) -> pa.Array:
        """The batch's ids as text (ids stored as numbers become their decimal text); none may be empty."""
        if pa.types.is_dictionary(ids.type):
            ids = ids.dictionary_decode()
        if pa.types.is_floating(ids.type):
            ids = pc.if_else(pc.is_nan(ids), pa.scalar(None, ids.type), ids)
        if ids.null_count:
            raise UserError(f"{self._row(_first(ids.is_null()))}: empty {name}")
        if pa.types.is_integer(ids.type):
            return ids  # encoded as numbers, their text is decimal
        ids = _as_text(ids)
        empty = pc.equal(pc.binary_length(ids), 0)
        if pc.any(empty).as_py():
            raise UserError(f"{self._row(_first(empty))}: empty {name}")
        return ids

    def _times(self, time: pa.Array) -> np.ndarray:
        if pa.types.is_string(time.type) or pa.types.is_large_string(time.type):
            try:
                time = pc.cast(time, pa.float64())
            except pa.ArrowInvalid:
                raise self._bad_time_text(time) from None
        if not (pa.types.is_floating(time.type) or pa.types.is_integer(time.type)):
            raise UserError(f"{self.path}: column Time holds {time.type}, expected Unix seconds as numbers")
        if time.null_count:
            raise UserError(f"{self._row(_first(time.is_null()))}: empty Time")
        values = time.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
        finite = np.isfinite(values)
        if not finite.all():
            index = int(np.flatnonzero(~finite)[0])
            value = float(values[index])
            what = "not a number" if np.isnan(value) else "not a finite number"
            raise UserError(f"{self._row(index)}: Time {value} is {what} (Unix seconds)")
        return values

    def _bad_time_text(self, time: pa.Array) -> UserError:
        empty = pc.equal(pc.binary_length(time), 0)
        if pc.any(empty).as_py():
            return UserError(f"{self._row(_first(empty))}: empty Time")
        bad = _first_unparsable(time)
        return UserError(f"{self._row(bad)}: Time {time[bad].as_py()!r} is not a number (Unix seconds)")

    def finish(self) -> SessionColumns:
        if self.rows == 0:
            raise UserError(f"{self.path}: no events")
        session, session_ids = self.sessions.finish()
        item, item_ids = self.items.finish()
        columns = SessionColumns(session, session_ids, item, item_ids, concatenate(self.times))
        release_arrow_memory()
        return columns


def _first(mask: pa.Array) -> int:
    return int(pc.index(mask, True).as_py())


def _as_text(ids: pa.Array) -> pa.Array:
    """Ids as text: strings as they are, integers in decimal, floats as Python writes them (1.0)."""
    if pa.types.is_string(ids.type):
        return ids
    if pa.types.is_floating(ids.type):  # rare: Python's text of each distinct value
        encoded = pc.dictionary_encode(ids)
        text = pa.array([repr(float(v)) for v in encoded.dictionary.to_numpy()], pa.string())
        return text.take(encoded.indices)
    return pc.cast(ids, pa.string())


def _to_arrow(out: pd.DataFrame):
    """The three columns as an Arrow table (zero-copy for numeric columns; categoricals decoded)."""
    import pyarrow as pa

    arrays = []
    for col in COLUMNS:
        series = out[col]
        try:
            arr = pa.array(series, from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed object columns: write their text
            arr = pa.array(series.astype(str), from_pandas=True)
        if pa.types.is_dictionary(arr.type):
            arr = arr.cast(arr.type.value_type)
        arrays.append(arr)
    return pa.table(arrays, names=list(COLUMNS))


_WRITE_CHUNK = 1 << 20


def _float_text(col):
    """Floats as text the way pandas writes them: shortest round-trip digits, and whole numbers keep a
    trailing ".0" (1396338639.0, not 1396338639), so files match the authors' prepared files byte for byte."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    text = pc.cast(col, pa.string())
    values = col.to_numpy(zero_copy_only=False)
    with np.errstate(invalid="ignore"):
        whole = np.flatnonzero(values == np.trunc(values))
    if whole.size:
        candidates = text.take(pa.array(whole))
        digits = pc.match_substring_regex(candidates, r"^-?[0-9]+$").to_numpy(zero_copy_only=False)
        if digits.any():
            mask = np.zeros(len(text), dtype=bool)
            mask[whole[digits]] = True
            fixed = pc.binary_join_element_wise(candidates.filter(pa.array(digits)), ".0", "")
            text = pc.replace_with_mask(text, pa.array(mask), fixed)
    return text


@contextlib.contextmanager
def _maybe_gzip(raw, path: Path):
    if path.suffix != ".gz":
        yield raw
        return
    # mtime 0 keeps the output byte-identical between runs
    with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as fh:
        yield fh


def write_session_file(df: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write atomically as TSV (gzip-compressed when the name ends in .gz) or Parquet (.parquet).

    TSV: the header `SessionId<TAB>ItemId<TAB>Time`, then one unquoted row per event, written by
    pyarrow (tens of millions of rows per second and core). Ids holding a tab, newline or quote
    cannot be written unquoted; that is a UserError (write Parquet instead).
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    path = Path(path)
    out = df[list(COLUMNS)]
    if path.suffix == ".parquet":
        with atomic_file(path, "wb") as fh:
            out.to_parquet(fh, index=False)
        return
    table = _to_arrow(out)
    float_time = pa.types.is_floating(table.schema.field("Time").type)
    schema = table.schema.set(2, pa.field("Time", pa.string())) if float_time else table.schema
    options = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none", batch_size=1 << 17)
    try:
        with atomic_file(path, "wb") as raw, _maybe_gzip(raw, path) as fh:
            fh.write("\t".join(COLUMNS).encode() + b"\n")
            with pacsv.CSVWriter(fh, schema, write_options=options) as writer:
                for offset in range(0, table.num_rows, _WRITE_CHUNK):
                    part = table.slice(offset, _WRITE_CHUNK)
                    if float_time:
                        part = part.set_column(2, "Time", _float_text(part.column(2)))
                    writer.write_table(part)
    except pa.ArrowInvalid as exc:
        raise UserError(
            f"cannot write {path}: an id contains a tab, newline or quote character, which the unquoted TSV "
            f"format cannot hold ({str(exc).splitlines()[0]}); write a .parquet file instead"
        ) from None
