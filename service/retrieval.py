"""Approximate top-k for large catalogues: a maximum-inner-product index over the output layer.

Exact scoring reads the whole [n_items x layer] output matrix for every request: 60 ms per request
at 2M items on one core. The index returns a few hundred *candidates* instead, which the engine
re-scores exactly (so every returned score is the model's exact score; only recall is approximate).

Item i scores h . w_i + b_i. Appending the bias, x_i = [w_i, b_i] and q = [h, 1] turn this into
a plain inner product, and one more coordinate turns the inner product into a Euclidean distance
(Bachrach et al. 2014): with M = max_i |x_i|, x'_i = [x_i, sqrt(M^2 - |x_i|^2)] and q' = [q, 0],
|q' - x'_i|^2 = |q|^2 + M^2 - 2 q . x_i, so the nearest x'_i are the highest-scoring items. That
lets faiss's inverted-file index (k-means cells, 8-bit scalar-quantised codes) do the search with
its well-tested L2 code: a request scans `nprobe` of about 4 sqrt(n_items) cells.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

FORMAT = "ivf-sq8-l2mips-v1"  # changes whenever the index layout or its transform changes


@dataclass(frozen=True)
class IndexParams:
    """How the index is built (part of its cache key) and searched (not part of it)."""

    n_lists: int
    nprobe: int
    candidates: int

    @classmethod
    def for_catalogue(cls, n_items: int, nprobe: int, candidates: int) -> IndexParams:
        """About 4 sqrt(N) cells (faiss's rule of thumb), each with at least ~40 items."""
        n_lists = int(min(65536, max(1, min(4 * math.sqrt(n_items), n_items / 40))))
        return cls(n_lists=n_lists, nprobe=min(nprobe, n_lists), candidates=candidates)


def item_vectors(weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """[n_items, layer + 2] float32: item vector, bias, and the coordinate that levels the norms."""
    n, width = weights.shape
    out = np.empty((n, width + 2), dtype=np.float32)
    out[:, :width] = weights
    out[:, width] = bias
    sq = np.einsum("ij,ij->i", out[:, : width + 1], out[:, : width + 1], dtype=np.float64)
    out[:, width + 1] = np.sqrt(np.maximum(sq.max() - sq, 0.0))
    return out


def query_vectors(h: np.ndarray) -> np.ndarray:
    """[batch, layer + 2] float32 queries [h, 1, 0] for session vectors h [batch, layer]."""
    b, width = h.shape
    out = np.zeros((b, width + 2), dtype=np.float32)
    out[:, :width] = h
    out[:, width] = 1.0
    return out


class MipsIndex:
    """A built (or loaded) faiss index plus what GET /v1/model reports about it."""

    def __init__(self, index: Any, params: IndexParams, build_s: float | None, source: str) -> None:
        import faiss

        self._faiss = index
        self.params = params
        self.build_s = build_s
        self.source = source  # "built" or the cache file it came from
        self._search_params = faiss.SearchParametersIVF(nprobe=params.nprobe)
        self.n_items = int(index.ntotal)

    def search(self, h: np.ndarray, n: int) -> np.ndarray:
        """Candidate item indices [batch, n] for session vectors h [batch, layer]; -1 pads."""
        _, labels = self._faiss.search(query_vectors(h), min(n, self.n_items), params=self._search_params)
        return labels

    def serialize(self) -> np.ndarray:
        import faiss

        return faiss.serialize_index(self._faiss)

    @classmethod
    def deserialize(cls, data: np.ndarray, params: IndexParams, source: str, n_items: int, width: int) -> MipsIndex:
        """Rebuild from serialize()'s bytes; ValueError if they do not describe this catalogue."""
        import faiss

        try:
            index = faiss.deserialize_index(data)
        except RuntimeError as exc:
            raise ValueError(f"not a faiss index ({str(exc).splitlines()[0] if str(exc) else exc})") from None
        if index.ntotal != n_items or index.d != width + 2:
            raise ValueError(f"index of {index.ntotal} x {index.d}, expected {n_items} x {width + 2}")
        return cls(index, params, None, source)

    def describe(self) -> dict[str, Any]:
        return {
            "type": FORMAT,
            "lists": self.params.n_lists,
            "nprobe": self.params.nprobe,
            "candidates": self.params.candidates,
            "build_s": None if self.build_s is None else round(self.build_s, 2),
            "source": self.source,
        }


def build_index(weights: np.ndarray, bias: np.ndarray, params: IndexParams, threads: int = 1) -> MipsIndex:
    """Train the cells on a sample of the items, then add every item; releases the GIL throughout."""
    import faiss

    started = time.perf_counter()
    faiss.omp_set_num_threads(max(1, threads))  # this thread's OpenMP team only
    vectors = item_vectors(weights, bias)
    d = vectors.shape[1]
    quantizer = faiss.IndexFlatL2(d)
    index = faiss.IndexIVFScalarQuantizer(quantizer, d, params.n_lists, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_L2)
    index.cp.max_points_per_centroid = 64  # k-means on a sample: cells need not be perfect, only reasonable
    index.cp.niter = 12
    index.cp.seed = 1234
    index.train(vectors)
    index.add(vectors)
    elapsed = time.perf_counter() - started
    log.info("built the top-k index over %d items (%d cells, 8-bit codes) in %.1f s", len(vectors), params.n_lists, elapsed)
    return MipsIndex(index, params, elapsed, "built")
