"""Id columns as integer codes, the ids kept as text: how a session file's ids are encoded as it is read.

Ids are text ("0115" and "115" are two items). Encoding tens of millions of them is the costly part
of reading a log, so each column takes the cheapest exact route:

- ids of at most 18 ASCII digits (nearly every real log) go through an integer key: a 1 followed by
  the digits (0115 -> 10115), one to one with the text, hashed and sorted as a machine integer (about
  twice as fast as hashing the text); ids stored as integers (Parquet written from numeric ids) are
  their own keys. The text is rebuilt from the keys for the dictionary (one entry per distinct id) only;
- item ids: each batch is dictionary-encoded on its own by pyarrow's hash kernel (its table holds
  the batch's distinct items, small enough to stay in cache), and the batches' dictionaries are
  unified once at the end;
- session ids come in runs (a session's events are together in nearly every file): only the first
  id of each run is kept, and keys are checked for repeats by sorting them; with no repeat
  every run is a session and nothing is hashed at all (hashing millions of distinct ids is
  memory-bound and several times slower than sorting them). Otherwise the run ids are
  dictionary-encoded.

Codes are int32 and numbered in order of first appearance, as pandas.factorize numbers them.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MAX_KEY_DIGITS = 18  # 10**18 + an 18-digit number still fits an int64
_POWERS_OF_TEN = 10 ** np.arange(MAX_KEY_DIGITS + 1, dtype=np.int64)

# How a column's ids became int64 keys, which says how to turn keys back into the ids' text:
INTEGERS = "integers"  # ids stored as integers (Parquet): the key is the value, the text its decimal
DIGITS = "digits"  # text of at most 18 ASCII digits: the key is a 1 followed by the digits
TEXT = "text"  # anything else: no key, the text itself is hashed


def id_keys(ids: pa.Array) -> tuple[str, np.ndarray | None]:
    """The cheapest exact int64 keys of a batch of ids (text none of them empty, or integers), and
    their kind; (TEXT, None) when there are none."""
    if pa.types.is_integer(ids.type):
        try:
            return INTEGERS, pc.cast(ids, pa.int64()).to_numpy(zero_copy_only=False)
        except pa.ArrowInvalid:  # uint64 beyond the int64 range
            return TEXT, None
    keys = digit_keys(ids)
    return (TEXT, None) if keys is None else (DIGITS, keys)


def digit_keys(ids: pa.Array) -> np.ndarray | None:
    """int64 keys, "1" followed by the id's digits, when every id is at most 18 ASCII digits; else None."""
    if len(ids) == 0 or not pc.all(pc.ascii_is_decimal(ids)).as_py():
        return None
    lengths = pc.binary_length(ids)
    if pc.max(lengths).as_py() > MAX_KEY_DIGITS:
        return None
    return _POWERS_OF_TEN[lengths.to_numpy()] + pc.cast(ids, pa.int64()).to_numpy()


def as_text(ids: pa.Array) -> pa.Array:
    """Ids as text (integers in decimal)."""
    return ids if pa.types.is_string(ids.type) else pc.cast(ids, pa.string())


def key_text(kind: str, keys: pa.Array) -> pa.Array:
    """The ids back from their keys of that kind (DIGITS: 10115 -> "0115"; INTEGERS: 115 -> "115")."""
    if kind == DIGITS:
        return pc.utf8_slice_codeunits(pc.cast(keys, pa.string()), 1)
    return as_text(keys)


def unify(chunks: list[pa.DictionaryArray]) -> tuple[np.ndarray, pa.Array]:
    """One dictionary for all chunks (the list is consumed chunk by chunk): int32 codes in order of first
    appearance. A chunk's dictionary lists its values in order of first appearance, so encoding the
    chunks' dictionaries back to back numbers the values in order of first appearance overall."""
    encoded = pc.dictionary_encode(pa.chunked_array([c.dictionary for c in chunks]).combine_chunks())
    mapping = encoded.indices.to_numpy(zero_copy_only=False)
    codes = np.empty(sum(len(c) for c in chunks), dtype=np.int32)
    at = base = 0
    for i, chunk in enumerate(chunks):
        local = chunk.indices.to_numpy(zero_copy_only=False)
        np.take(mapping, local + base if base else local, out=codes[at : at + len(local)])
        at += len(local)
        base += len(chunk.dictionary)
        chunks[i] = None  # type: ignore[call-overload]  # freed as soon as it is copied
    chunks.clear()
    return codes, encoded.dictionary


def concatenate(parts: list[np.ndarray]) -> np.ndarray:
    """np.concatenate that frees each part once copied (the list is consumed): peak is the result plus one part."""
    if len(parts) == 1:
        return parts.pop()
    out = np.empty(sum(len(p) for p in parts), dtype=parts[0].dtype)
    at = 0
    for i, part in enumerate(parts):
        out[at : at + len(part)] = part
        at += len(part)
        parts[i] = None  # type: ignore[call-overload]
    parts.clear()
    return out


class ItemCodes:
    """Encodes an item id column batch by batch: each batch hashed on its own, one dictionary at the end."""

    def __init__(self) -> None:
        self.chunks: list[pa.DictionaryArray] = []
        self.kinds: list[str] = []

    def add(self, ids: pa.Array) -> None:
        """A batch of ids (text none of them empty, or integers)."""
        kind, keys = id_keys(ids)
        self.chunks.append(pc.dictionary_encode(as_text(ids) if keys is None else pa.array(keys)))
        self.kinds.append(kind)

    def finish(self) -> tuple[np.ndarray, pa.Array]:
        """Codes of all events (int32) and the ids (text), both in order of first appearance."""
        mixed = len(set(self.kinds)) > 1
        if mixed:  # batches of different kinds: their dictionaries as text, then unified
            self.chunks = [pa.DictionaryArray.from_arrays(c.indices, key_text(k, c.dictionary))
                           for c, k in zip(self.chunks, self.kinds)]
        codes, dictionary = unify(self.chunks)
        return codes, key_text(TEXT if mixed else self.kinds[0], dictionary)


class SessionRuns:
    """Encodes a session id column batch by batch as runs of equal ids; sessions are found at the end."""

    def __init__(self) -> None:
        self.run_of_event: list[np.ndarray] = []
        self.kind: str | None = None  # of every run id so far (None: no run yet)
        self.run_keys: list[np.ndarray] = []  # each run's id as its key while they all have one of a kind...
        self.run_ids: list[pa.Array] = []  # ...and as text from the first batch where they do not
        self.n_runs = 0
        self.last: str | int | None = None  # the id of the run the previous batch ended in

    def add(self, ids: pa.Array) -> None:
        """A batch of ids (text none of them empty, or integers)."""
        n = len(ids)
        change = np.empty(n, dtype=bool)
        change[0] = ids[0].as_py() != self.last
        change[1:] = pc.not_equal(ids.slice(1), ids.slice(0, n - 1)).to_numpy(zero_copy_only=False)
        runs = np.cumsum(change, dtype=np.int64)
        runs += self.n_runs - 1
        run_ids = ids.filter(pa.array(change))
        if len(run_ids):
            self._add_run_ids(run_ids)
        self.run_of_event.append(runs.astype(np.int32))
        self.n_runs = int(runs[-1]) + 1
        self.last = ids[n - 1].as_py()

    def _add_run_ids(self, run_ids: pa.Array) -> None:
        kind, keys = id_keys(run_ids)
        if self.kind is None:
            self.kind = kind
        if kind == self.kind != TEXT:
            self.run_keys.append(keys)
            return
        if self.kind != TEXT:  # the first ids of another kind: the runs so far become text
            if self.run_keys:
                self.run_ids = [key_text(self.kind, pa.array(concatenate(self.run_keys), pa.int64()))]
            self.kind = TEXT
        self.run_ids.append(as_text(run_ids))

    def finish(self) -> tuple[np.ndarray, pa.Array]:
        """Session codes of all events (int32) and the session ids (text), in order of first appearance."""
        runs = concatenate(self.run_of_event)
        if self.kind != TEXT:
            keys = concatenate(self.run_keys)
            ordered = np.sort(keys)
            if not (ordered[1:] == ordered[:-1]).any():  # every run is a session: run numbers are the codes
                return runs, key_text(self.kind, pa.array(keys))
            del ordered
            encoded = pc.dictionary_encode(pa.array(keys))
            session_ids = key_text(self.kind, encoded.dictionary)
        else:
            encoded = pc.dictionary_encode(pa.chunked_array(self.run_ids, pa.string())).combine_chunks()
            self.run_ids = []
            session_ids = encoded.dictionary
        run_codes = encoded.indices.to_numpy(zero_copy_only=False)
        return run_codes[runs], session_ids
