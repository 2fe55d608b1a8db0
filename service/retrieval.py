"""Approximate top-k for large catalogues: a maximum-inner-product index over the output layer.

Exact scoring reads the whole [n_items x layer] output matrix for every request: 60 ms per request
at 2M items on one core. The index returns a few hundred *candidates* instead, which the engine
re-scores exactly (so every returned score is the model's exact score; only recall is approximate).

Item i scores h . w_i + b_i, the inner product of q = [h, 1] and x_i = [w_i, b_i]. The index is a
faiss inverted file: about sqrt(n_items) k-means cells, and in each cell the items' vectors as 4-bit
product-quantisation codes (two dimensions per 4-bit code, about 0.25 bytes per dimension) that are
scored against the query with SIMD ("fast scan"). The scan uses inner products, so its coarse
scores rank the candidates the way the model does. The cells are formed in a space where inner
products are distances (Bachrach et al. 2014): with M = max_i |x_i|, x'_i = [x_i, sqrt(M^2 - |x_i|^2)]
all have norm M, and for q' = [q, 0], |q' - x'_i|^2 = |q|^2 + M^2 - 2 q . x_i, so the cells nearest to
q' hold the highest-scoring items, and the many barely trained items of a long tail (short vectors,
so long extra coordinates) gather in cells that queries rarely visit. The extra coordinate is
stored with the codes; the query's is 0, so it never changes a score.

GRU4Rec's item vectors are spread out in all their dimensions (Adagrad moves a rarely clicked item
far in one step), so a request searches about an eighth of the cells to find 95% of the exact
top-20; the cheap fast-scan codes are what make that affordable (about 0.6 ms of CPU per request at
1.9M items).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

FORMAT = "ivf-pq4fs-ip-v1"  # changes whenever the index layout or its transform changes
SCAN_PER_CANDIDATE = 20  # least items the coarse search scans per candidate it returns (default nprobe)


@dataclass(frozen=True)
class IndexParams:
    """How the index is built (part of its cache key) and searched (not part of it)."""

    n_lists: int
    nprobe: int
    candidates: int

    @classmethod
    def for_catalogue(cls, n_items: int, nprobe: int | None, candidates: int) -> IndexParams:
        """About sqrt(N) cells, each with at least ~40 items. By default an eighth of them is searched,
        and at least enough cells to hold SCAN_PER_CANDIDATE items per candidate: on a small catalogue
        an eighth of the cells holds fewer items than the candidates asked for (2,873 items: 53 cells,
        7 searched, ~380 items for 500 candidates; Recall@20 8.7% under exact), while from about
        200,000 items on an eighth of the cells already holds over a hundred items per candidate."""
        n_lists = int(min(65536, max(1, min(math.sqrt(n_items), n_items / 40))))
        if nprobe is None:
            nprobe = max(1, round(n_lists / 8), math.ceil(SCAN_PER_CANDIDATE * candidates * n_lists / max(n_items, 1)))
        return cls(n_lists=n_lists, nprobe=min(nprobe, n_lists), candidates=candidates)


def item_vectors(weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """[n_items, width] float32: item vector, bias, the coordinate that levels the norms, and a zero
    column if needed to make the width even (the codes hold two dimensions each)."""
    n, layer = weights.shape
    out = np.zeros((n, _width(layer)), dtype=np.float32)
    out[:, :layer] = weights
    out[:, layer] = bias
    sq = np.einsum("ij,ij->i", out[:, : layer + 1], out[:, : layer + 1], dtype=np.float64)
    out[:, layer + 1] = np.sqrt(np.maximum(sq.max() - sq, 0.0))
    return out


def _width(layer: int) -> int:
    return layer + 2 + (layer % 2)


def query_vectors(h: np.ndarray) -> np.ndarray:
    """[batch, width] float32 queries [h, 1, 0, (0)] for session vectors h [batch, layer]."""
    b, layer = h.shape
    out = np.zeros((b, _width(layer)), dtype=np.float32)
    out[:, :layer] = h
    out[:, layer] = 1.0
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

    def search(self, h: np.ndarray, counts: list[int]) -> np.ndarray:
        """Candidate item indices [batch, max(counts)] for session vectors h [batch, layer], counts[r]
        of them for row r; -1 pads.

        One query at a time, each with its own count: fast scan quantises its distance tables per
        call, and the candidates found depend on how many are asked for, so a query searched in
        company would otherwise get other candidates than alone (batching must not change answers).
        """
        queries = query_vectors(h)
        counts = [min(n, self.n_items) for n in counts]
        labels = np.full((len(queries), max(counts)), -1, dtype=np.int64)
        for r, n in enumerate(counts):
            labels[r, :n] = self._faiss.search(queries[r : r + 1], n, params=self._search_params)[1][0]
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
        if index.ntotal != n_items or index.d != _width(width):
            raise ValueError(f"index of {index.ntotal} x {index.d}, expected {n_items} x {_width(width)}")
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
    """Train the cells and the codes on a sample of the items, then add every item (the GIL is
    released throughout, so requests keep being served meanwhile)."""
    import faiss

    started = time.perf_counter()
    faiss.omp_set_num_threads(max(1, threads))  # this thread's OpenMP team only
    vectors = item_vectors(weights, bias)
    d = vectors.shape[1]
    # cells by Euclidean distance in the levelled space; codes scored by inner product with [h, 1, 0]
    index = faiss.IndexIVFPQFastScan(faiss.IndexFlatL2(d), d, params.n_lists, d // 2, 4, faiss.METRIC_INNER_PRODUCT)
    index.by_residual = False  # the codes hold the vectors themselves: cell centroids are no L2-IP mix
    for cp in (index.cp, index.pq.cp):  # k-means on samples: cells and codes need not be perfect, only reasonable
        cp.max_points_per_centroid = 32
        cp.min_points_per_centroid = 1  # small catalogues (forced on): no warnings on stderr
        cp.niter = 10
        cp.seed = 1234
    index.train(vectors)
    index.add(vectors)
    elapsed = time.perf_counter() - started
    log.info("built the top-k index over %d items (%d cells, 4-bit codes) in %.1f s", len(vectors), params.n_lists, elapsed)
    return MipsIndex(index, params, elapsed, "built")
