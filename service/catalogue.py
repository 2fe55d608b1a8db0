"""Item ids <-> dense indices without a Python object per item.

A catalogue of 1.8M items held as a list of str plus a dict would cost about 130 bytes per item
(str objects, dict slots, boxed ints) and give the garbage collector millions of objects to walk.
Here the ids are one UTF-8 buffer with int64 offsets, and lookups go through a sorted array of the
ids' hashes (collisions are resolved by comparing bytes): about 33 bytes per 9-digit id.

Lookups use Python's own str hash, so the table is only valid inside the process that built it,
which is all the service needs (it is rebuilt at every model load).
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterable, Sequence

import numpy as np

from gru4rec.foundation.errors import ModelUnavailable


class ItemCatalogue:
    """The model's item ids in index order, with lookups both ways."""

    def __init__(self, ids: Sequence[str], source: str = "model") -> None:
        n = len(ids)
        encoded = [str(i).encode("utf-8", "surrogatepass") for i in ids]
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=n), out=offsets[1:])
        self._data = b"".join(encoded)
        del encoded
        hashes = np.fromiter((hash(str(i)) for i in ids), dtype=np.int64, count=n)
        order = np.argsort(hashes, kind="stable")
        # array.array rather than numpy: indexing one element gives a plain int in tens of nanoseconds,
        # and bisect works on it directly (numpy calls cost microseconds and release the GIL, which
        # the batcher thread then holds)
        self._offsets = _int_array("q", offsets)
        self._hashes = _int_array("q", hashes[order])
        self._order = _int_array("q", order)
        self._check_unique(source)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    @property
    def nbytes(self) -> int:
        """Memory held by the catalogue (for the log and the memory estimate)."""
        return len(self._data) + 8 * (len(self._offsets) + len(self._hashes) + len(self._order))

    def _bytes_at(self, index: int) -> bytes:
        return self._data[self._offsets[index] : self._offsets[index + 1]]

    def _check_unique(self, source: str) -> None:
        hashes = np.frombuffer(self._hashes, dtype=np.int64)
        same = np.flatnonzero(hashes[1:] == hashes[:-1])
        for pos in same.tolist():  # hash neighbours: almost always true duplicates
            a, b = self._order[pos], self._order[pos + 1]
            if self._bytes_at(a) == self._bytes_at(b):
                raise ModelUnavailable(
                    f"{source}: item id {self.id_of(a)!r} occurs twice in the item list (indices {min(a, b)} and "
                    f"{max(a, b)}); the metadata is damaged"
                )

    # -- lookups ---------------------------------------------------------------------------------
    def index_of(self, item: str) -> int:
        """Dense index of `item`, or -1 if the model does not know it."""
        h = hash(item)
        hashes = self._hashes
        pos = bisect_left(hashes, h)
        raw = None
        while pos < len(hashes) and hashes[pos] == h:  # more than one only for a hash collision
            index = self._order[pos]
            raw = raw or item.encode("utf-8", "surrogatepass")
            if self._data[self._offsets[index] : self._offsets[index + 1]] == raw:
                return index
            pos += 1
        return -1

    def lookup(self, items: Sequence[str]) -> list[int]:
        """Dense index of each id; -1 for ids the model does not know."""
        return [self.index_of(i) for i in items]

    def known(self, items: Iterable[str] | None) -> list[int]:
        """Indices of the known ids only (for filters: unknown ids simply match nothing)."""
        if not items:
            return []
        return [i for i in self.lookup(list(items)) if i >= 0]

    def id_of(self, index: int) -> str:
        return self._bytes_at(index).decode("utf-8", "surrogatepass")

    def ids_of(self, indices: Iterable[int]) -> list[str]:
        data, offsets = self._data, self._offsets
        return [data[offsets[i] : offsets[i + 1]].decode("utf-8", "surrogatepass") for i in indices]

    @property
    def offsets(self) -> np.ndarray:
        return np.frombuffer(self._offsets, dtype=np.int64)

    # -- search ----------------------------------------------------------------------------------
    def matching(self, needle: str) -> np.ndarray:
        """Boolean mask of the ids containing `needle`, ignoring case (vectorised: no str per item)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        array = pa.LargeStringArray.from_buffers(len(self), pa.py_buffer(self.offsets), pa.py_buffer(self._data))
        return pc.match_substring(array, needle, ignore_case=True).to_numpy(zero_copy_only=False)


def _int_array(code: str, values: np.ndarray) -> array:
    out = array(code)
    out.frombytes(np.ascontiguousarray(values, dtype=np.int64).tobytes())
    return out
