"""The columns of a raw log, built batch by batch while a reader streams its input.

Readers (data_prep.readers) parse a log in blocks and hand every block's id and time columns to an
IdColumn / TimeColumn; only what the pipeline keeps per event is accumulated (int64 ids or int32
codes, float64 seconds), so memory is the result plus one block whatever the size of the file.

Ids are text, kept exactly as written. A column whose ids are all canonical integers (digits with an
optional minus sign, no leading zero, within int64: what a number prints as) keeps them as int64,
ordered numerically; any other id (0115, 18446744073709551616, sku-7) makes the column text, coded at
the end in the order of the sorted texts (Ids.labels). Ids typed as numbers in the file (Parquet
integers, OTTO's JSON numbers) are their decimal text.

Times become float64 Unix seconds (UTC): numbers in seconds or milliseconds (`--time-unit auto`
decides on the largest value of the whole column), date-time types, or ISO-8601 text (naive times
are UTC). Every bad value is a UserError naming its row; times beyond the years 1..9999 too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gru4rec.data.ids import concatenate, unify
from gru4rec.foundation.errors import UserError

log = logging.getLogger(__name__)

# Numbers above this are taken as milliseconds by --time-unit auto (1e11 s is the year 5138,
# 1e11 ms is March 1973).
MS_THRESHOLD = 1e11
# The Unix seconds of 0001-01-01 and 9999-12-31T23:59:59 (what a date can print as).
FIRST_TIME, LAST_TIME = -62135596800.0, 253402300799.0

Where = Callable[[int], str]  # event index -> "path: row N" for messages


@dataclass
class Ids:
    """One id column: int64 `codes` per event; `labels[code]` is the original id when they are text."""

    codes: np.ndarray
    labels: pa.Array | None = None

    @property
    def is_int(self) -> bool:
        return self.labels is None

    def take(self, mask_or_index: np.ndarray) -> Ids:
        return Ids(self.codes[mask_or_index], self.labels)


def first_true(mask) -> int:
    """Index of the first true value of a boolean numpy or Arrow array."""
    if isinstance(mask, (pa.Array, pa.ChunkedArray)):
        return int(pc.index(mask, True).as_py())
    return int(np.flatnonzero(mask)[0])


def plain(value) -> str:
    """A value for a message: 1e+29, inf, 'abc' (never np.float64(inf))."""
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return repr(value)


def single(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One contiguous array (a batch's column may come in chunks)."""
    if isinstance(values, pa.ChunkedArray):
        return values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
    return values


class IdColumn:
    """Encodes one id column batch by batch (see the module docstring for what stays an integer)."""

    def __init__(self, name: str, where: Where, numbers_in_text: bool = True) -> None:
        """`numbers_in_text`: ids read as text (CSV, TSV, YooChoose, Diginetica) that are canonical
        integers are integers; otherwise only ids typed as numbers are (Parquet string columns stay text)."""
        self.name, self.where, self.numbers_in_text = name, where, numbers_in_text
        self.rows = 0
        self.parts: list = []  # int64 numpy arrays, or dictionary-encoded text
        self.is_int = True

    def add(self, values: pa.Array | pa.ChunkedArray) -> None:
        values = single(values)
        if pa.types.is_dictionary(values.type):
            values = values.dictionary_decode()
        if values.null_count:
            raise UserError(f"{self.where(self.rows + first_true(values.is_null()))}: empty {self.name}")
        ints = self._integers(values)
        if ints is not None:
            self.parts.append(ints)
        else:
            text = values if pa.types.is_string(values.type) else pc.cast(values, pa.string())
            empty = pc.equal(pc.binary_length(text), 0)
            if pc.any(empty).as_py():
                raise UserError(f"{self.where(self.rows + first_true(empty))}: empty {self.name}")
            self.parts.append(pc.dictionary_encode(text))
            self.is_int = False
        self.rows += len(values)

    def _integers(self, values: pa.Array) -> np.ndarray | None:
        """The ids as int64 when they are integers (see module docstring), else None."""
        kind = values.type
        try:
            if pa.types.is_integer(kind) or pa.types.is_decimal(kind):
                return pc.cast(values, pa.int64()).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):  # beyond int64: text
            return None
        if pa.types.is_floating(kind):  # numbers stored as floats (a NaN-able integer column)
            numbers = values.to_numpy(zero_copy_only=False)
            if np.all(np.isfinite(numbers)) and np.all(numbers == np.round(numbers)) and np.all(np.abs(numbers) < 2**53):
                return numbers.astype(np.int64)
            return None
        if not (self.numbers_in_text and (pa.types.is_string(kind) or pa.types.is_large_string(kind))):
            return None
        try:
            ints = pc.cast(values, pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None
        # int64 parsing also takes 007, 0x1F and -0: canonical means no leading zero
        long_zero = pc.and_(pc.starts_with(values, "0"), pc.greater(pc.binary_length(values), 1))
        if pc.any(long_zero).as_py() or pc.any(pc.starts_with(values, "-0")).as_py():
            return None
        return ints.to_numpy(zero_copy_only=False)

    def finish(self) -> Ids:
        """All ids: int64 integers, or int32 codes in the order of the sorted texts with those texts."""
        if self.is_int:
            return Ids(concatenate(self.parts))
        chunks = [p if isinstance(p, pa.DictionaryArray) else _int_text(p) for p in self.parts]
        self.parts = []
        codes, labels = unify(chunks)
        order = pc.sort_indices(labels).to_numpy(zero_copy_only=False)
        rank = np.empty(len(order), dtype=np.int32)
        rank[order] = np.arange(len(order), dtype=np.int32)
        np.take(rank, codes, out=codes)
        return Ids(codes, labels.take(pa.array(order)))


def _int_text(ints: np.ndarray) -> pa.DictionaryArray:
    encoded = pc.dictionary_encode(pa.array(ints))
    return pa.DictionaryArray.from_arrays(encoded.indices, pc.cast(encoded.dictionary, pa.string()))


# --------------------------------------------------------------------------------------- times


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


def timestamp_seconds(col: pa.Array) -> np.ndarray:
    """Date or timestamp values -> float64 Unix seconds."""
    if pa.types.is_date(col.type):
        col = col.cast(pa.timestamp("s"))
    return ticks_to_seconds(col.cast(pa.int64()).to_numpy(zero_copy_only=False), col.type.unit)


def iso_seconds(text: pa.Array, name: str, where: Where, row0: int = 0) -> np.ndarray:
    """ISO-8601 strings -> float64 seconds; naive times are UTC; the first bad value is reported."""
    for kind in (pa.timestamp("ns", tz="UTC"), pa.timestamp("ns")):  # with an offset or Z; naive
        try:
            return timestamp_seconds(pc.cast(text, kind))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    import pandas as pd  # other ISO-8601 spellings: pandas, for this batch only

    values = text.to_numpy(zero_copy_only=False)
    parsed = pd.to_datetime(pd.Series(values, dtype=object), utc=True, format="ISO8601", errors="coerce")
    bad = parsed.isna().to_numpy()
    if bad.any():
        row = first_true(bad)
        raise UserError(
            f"{where(row0 + row)}: {name} {values[row]!r} is not a time (expected Unix seconds, milliseconds or an "
            f"ISO-8601 date-time like 2014-04-07T10:51:09.277Z)"
        )
    ns = parsed.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy().astype("datetime64[ns]").astype(np.int64)
    return ticks_to_seconds(ns, "ns")


def first_unparsable(text: pa.Array, kind: pa.DataType) -> int | None:
    """Index of the first string that does not cast to `kind` (bisection, no Python object per value)."""
    def parses(part: pa.Array) -> bool:
        try:
            pc.cast(part, kind)
            return True
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return False

    if parses(text):
        return None
    lo, hi = 0, len(text)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if parses(text.slice(lo, mid - lo)) else (lo, mid)
    return lo


class TimeColumn:
    """Converts one time column batch by batch to float64 Unix seconds, following --time-unit."""

    def __init__(self, name: str, unit: str, where: Where, source: str) -> None:
        self.name, self.unit, self.where, self.source = name, unit, where, source
        self.rows = 0
        self.kind: str | None = None  # "numbers", "times" (date-times or ISO text), fixed by the first batch
        self.parts: list[np.ndarray] = []  # seconds, or the numbers as given until the unit is known
        self.biggest = 0.0

    def add(self, values: pa.Array | pa.ChunkedArray) -> None:
        values = single(values)
        if values.null_count:
            raise UserError(f"{self.where(self.rows + first_true(values.is_null()))}: empty {self.name}")
        kind = values.type
        if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
            self._expect("times")
            if self.unit in ("s", "ms") and not self.rows:
                log.info("%s: column %s holds date-times; --time-unit %s does not apply", self.source, self.name, self.unit)
            self.parts.append(timestamp_seconds(values))
        elif pa.types.is_integer(kind) or pa.types.is_floating(kind):
            self._numbers(values.to_numpy(zero_copy_only=False), None)
        else:
            self._text(values if pa.types.is_string(kind) else pc.cast(values, pa.string()))
        self.rows += len(values)

    def _expect(self, kind: str) -> None:
        if self.kind is None:
            self.kind = kind
        elif self.kind != kind:
            raise UserError(f"{self.where(self.rows)}: {self.name} mixes numbers and date-times")

    def _numbers(self, numbers: np.ndarray, text: pa.Array | None) -> None:
        if self.unit == "iso":
            raise UserError(
                f"{self.source}: column {self.name} holds numbers, not ISO-8601 date-times; use --time-unit s, ms or auto"
            )
        self._expect("numbers")
        if numbers.dtype.kind == "f" and not np.all(np.isfinite(numbers)):
            row = first_true(~np.isfinite(numbers))
            shown = repr(text[row].as_py()) if text is not None else plain(numbers[row])
            raise UserError(f"{self.where(self.rows + row)}: {self.name} {shown} is not a finite number")
        finite = np.abs(numbers)
        if len(finite):
            self.biggest = max(self.biggest, float(finite.max()))
        self.parts.append(numbers)

    def _text(self, text: pa.Array) -> None:
        empty = pc.equal(pc.binary_length(text), 0)
        if pc.any(empty).as_py():
            raise UserError(f"{self.where(self.rows + first_true(empty))}: empty {self.name}")
        if self.unit == "iso" and first_unparsable(text, pa.float64()) is None:
            raise UserError(
                f"{self.source}: column {self.name} holds numbers, not ISO-8601 date-times; use --time-unit s, ms or auto"
            )
        if self.unit == "iso" or self.kind == "times" or (self.kind is None and self.unit == "auto"
                                                         and first_unparsable(text.slice(0, 1), pa.float64()) == 0):
            self._expect("times")
            self.parts.append(iso_seconds(text, self.name, self.where, self.rows))
            return
        for kind in (pa.int64(), pa.float64()):
            try:
                numbers = pc.cast(text, kind).to_numpy(zero_copy_only=False)
                break
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue
        else:
            row = first_unparsable(text, pa.float64())
            hint = f" (--time-unit {self.unit})" if self.unit != "auto" else " (the column holds Unix times)"
            raise UserError(f"{self.where(self.rows + row)}: {self.name} {text[row].as_py()!r} is not a number{hint}")
        self._numbers(numbers, text)

    def add_seconds(self, seconds: np.ndarray) -> None:
        """Times a reader computed itself (float64 Unix seconds)."""
        self._expect("times")
        self.parts.append(seconds)
        self.rows += len(seconds)

    def finish(self) -> np.ndarray:
        """float64 Unix seconds of all events (the list of parts is consumed)."""
        unit = self.unit
        if self.kind == "numbers" and unit == "auto":
            unit = "ms" if self.biggest > MS_THRESHOLD else "s"
            log.info("%s: column %s read as Unix %s (largest value %.0f)", self.source, self.name,
                     "milliseconds" if unit == "ms" else "seconds", self.biggest)
        row0 = 0
        for i, part in enumerate(self.parts):
            seconds = _to_seconds(part, unit) if self.kind == "numbers" else part
            self._check_range(seconds, part, unit, row0)
            self.parts[i] = seconds
            row0 += len(part)
        return concatenate(self.parts)

    def _check_range(self, seconds: np.ndarray, given: np.ndarray, unit: str, row0: int) -> None:
        outside = (seconds < FIRST_TIME) | (seconds > LAST_TIME)
        if outside.any():
            row = first_true(outside)
            value = f"{plain(given[row])} ({unit})" if self.kind == "numbers" else f"{plain(seconds[row])} s"
            raise UserError(
                f"{self.where(row0 + row)}: {self.name} {value} is out of range: a time must fall between the years "
                f"1 and 9999 (is the unit right? see --time-unit)"
            )


def _to_seconds(numbers: np.ndarray, unit: str) -> np.ndarray:
    if numbers.dtype.kind in "iu":
        return ticks_to_seconds(numbers.astype(np.int64, copy=False), unit)
    numbers = numbers.astype(np.float64, copy=False)
    return numbers / 1000.0 if unit == "ms" else numbers
