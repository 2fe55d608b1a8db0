"""Prepared session files: TSV with the header `SessionId ItemId Time` (the authors' format) or Parquet.

Every part of the project reads and writes them through this module.
"""

from __future__ import annotations

import contextlib
import gzip
import os
from pathlib import Path

import numpy as np
import pandas as pd

from gru4rec.foundation.atomic import atomic_file
from gru4rec.foundation.errors import UserError

COLUMNS = ("SessionId", "ItemId", "Time")


def read_session_file(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a prepared session file; ItemId comes back as str so ids of any kind map the same way.

    Accepts TSV (optionally .gz/.zip/.bz2/.xz compressed) and Parquet (by the .parquet suffix).
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file not found")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a session file")
    try:
        if path.suffix == ".parquet":
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path, sep="\t", dtype={"ItemId": str, "SessionId": str}, engine="c")
    except UserError:
        raise
    except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise UserError(f"{path}: cannot read as a session file ({exc})") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise UserError(
            f"{path}: missing column(s) {', '.join(missing)}; a session file needs the header "
            f"'SessionId<TAB>ItemId<TAB>Time' (found: {', '.join(map(str, df.columns)) or 'nothing'})"
        )
    df = df[list(COLUMNS)]
    if df.empty:
        raise UserError(f"{path}: no events")
    for col in ("SessionId", "ItemId"):
        bad = df[col].isna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0]) + 2  # +1 header, +1 one-based
            raise UserError(f"{path}: row {row}: empty {col}")
    df["ItemId"] = df["ItemId"].astype(str)
    df["SessionId"] = df["SessionId"].astype(str)
    time = pd.to_numeric(df["Time"], errors="coerce")
    bad = time.isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0]) + 2
        raise UserError(f"{path}: row {row}: Time {df['Time'].iloc[row - 2]!r} is not a number (Unix seconds)")
    df["Time"] = time.astype(np.float64)
    return df


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
