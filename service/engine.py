"""One loaded model, prepared for serving: id lookups, batched session-state steps and filtered top-k.

A ModelBundle is immutable once built. The service swaps whole bundles on reload (the model, its
catalogue and its top-k index together), and every request keeps the bundle it started with, so a
reload never mixes two models within one request.

A session state is one float32 vector: the GRU layers' hidden states side by side (layer 0 first).
That is what the session stores keep between clicks. Everything here works on batches of states, so
the batcher can serve the requests of a moment with one GRU step and one score product.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gru4rec.foundation.errors import ModelUnavailable, UserError
from gru4rec.model.checkpoint import Checkpoint, load_checkpoint, read_metadata
from gru4rec.training import native
from service.catalogue import ItemCatalogue
from service.index_cache import IndexCache, cache_key
from service.retrieval import IndexParams, MipsIndex, build_index

log = logging.getLogger(__name__)

NEG_INF = float("-inf")
EMPTY = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True, slots=True)
class Query:
    """What to rank: `k` items, never one of `exclude`, only from `include` when given."""

    k: int
    exclude: np.ndarray = field(default_factory=lambda: EMPTY)  # int64 indices (block list and seen items); duplicates allowed
    include: np.ndarray | None = None  # int64 unique allowed indices, `exclude` already removed
    exact: bool = False  # score every item even when an index is in use


@dataclass(frozen=True, slots=True)
class TopK:
    """Recommended item indices (best first) and their scores; `source` says where they came from."""

    indices: list[int]
    scores: list[float]
    source: str  # "model" or "popularity"


@dataclass(frozen=True)
class RetrievalSettings:
    """How top-k is found: `mode` auto (an index from `min_items` items on), index, or exact."""

    mode: str = "auto"
    min_items: int = 200_000
    nprobe: int | None = None  # None: an eighth of the cells
    candidates: int = 500
    cache_dir: Path | None = None

    def wants_index(self, n_items: int) -> bool:
        return self.mode == "index" or (self.mode == "auto" and n_items >= self.min_items)


class ModelBundle:
    """A checkpoint plus what the hot path needs: weights as tensors, the catalogue, an optional index."""

    def __init__(self, checkpoint: Checkpoint, source: str = "model") -> None:
        model = checkpoint.model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        self.model = model
        self.source = source
        self.version: str = checkpoint.version
        # the item list lives in the catalogue and item_counts; keep the rest for describe()
        self.metadata = {k: v for k, v in checkpoint.metadata.items() if k not in ("item_ids", "item_counts")}
        self.hyperparameters = checkpoint.hyperparameters
        self.loaded_at = time.time()
        self.catalogue = ItemCatalogue(checkpoint.item_map.ids, source)
        self.n_items = len(self.catalogue)
        self.layer_sizes: tuple[int, ...] = tuple(model.layer_sizes)
        self.state_size = int(sum(self.layer_sizes))
        self._last = self.layer_sizes[-1]
        self.weights = model.Wy.weight.detach()  # [n_items, layer]
        self.bias = model.By.weight.detach()[:, 0].contiguous()
        self.bias_column = model.By.weight.detach()  # [n_items, 1]
        # kept when exact scoring is the hot path: the compiled kernels' table (an 8-bit screen and
        # the float32 rows), or else a [layer, n_items] copy for MKL
        self.score_table: native.ScoreTable | None = None
        self.out_t: torch.Tensor | None = None
        # session steps in the compiled kernels when they are available (PyTorch's otherwise)
        self.gru_steps = native.GRUSteps(model) if native.library() is not None else None
        self.item_counts = _check_counts(checkpoint.item_counts, self.n_items, source)
        counts = self.item_counts.astype(np.float64)
        self.popular_order = np.lexsort((np.arange(self.n_items), -counts)).astype(np.int64)
        total = counts.sum()
        self.popularity = counts / total if total > 0 else np.zeros_like(counts)
        self.index: MipsIndex | None = None
        self.retrieval_note = "exact"

    # -- retrieval -------------------------------------------------------------------------------
    def prepare_retrieval(self, settings: RetrievalSettings, cache: IndexCache, dir_fd: int | None, threads: int = 1) -> None:
        """Exact scoring (the compiled kernels' table, or a transposed copy for MKL), or a top-k index."""
        if not settings.wants_index(self.n_items):
            if native.library() is not None and self._last <= native.ScoreTable.MAX_DIM:
                self.score_table = native.ScoreTable(self.weights, self.bias)
            else:  # h @ W^T as one GEMM over a [layer, n_items] contiguous copy: ~2x faster than the transposed view
                self.out_t = self.weights.T.contiguous()
            self.retrieval_note = "exact" if settings.mode == "exact" else f"exact (catalogue under {settings.min_items} items)"
            return
        params = IndexParams.for_catalogue(self.n_items, settings.nprobe, settings.candidates)
        weights, bias = self.weights.numpy(), self.bias.numpy()
        key = cache_key(weights, bias, params)

        def load(data: np.ndarray, where: str) -> MipsIndex:
            return MipsIndex.deserialize(data, params, where, self.n_items, self._last)

        self.index = cache.get(dir_fd, key, lambda: build_index(weights, bias, params, threads), load)
        self.retrieval_note = "index"

    # -- session state ---------------------------------------------------------------------------
    def initial_state(self) -> np.ndarray:
        return np.zeros(self.state_size, dtype=np.float32)

    def advance(self, states: np.ndarray, steps: Sequence[Sequence[int]], kernels: bool = True) -> np.ndarray:
        """States [batch, state_size] after feeding row r the items steps[r], one GRU step each.

        Rows may have different numbers of steps (a whole history next to a single click); a step
        then runs on the rows that still have items. `states` itself is not modified. The compiled
        kernels do the steps when they are available (and `kernels`), else the model's PyTorch code.
        """
        lengths = [len(s) for s in steps]
        n_steps = max(lengths, default=0)
        if n_steps == 0:
            return states
        if self.gru_steps is not None and kernels:
            out = np.array(states, dtype=np.float32, order="C")
            everyone, shortest = np.arange(len(steps)), min(lengths)
            for t in range(n_steps):
                rows = everyone if t < shortest else np.array([r for r, n in enumerate(lengths) if n > t])
                self.gru_steps.step(out, rows, np.array([steps[r][t] for r in rows], dtype=np.int64))
            return out
        with torch.inference_mode():
            h = torch.from_numpy(states)
            if min(lengths) == n_steps:
                items = torch.tensor(steps, dtype=torch.long)
                for t in range(n_steps):
                    h = self.model.step_packed(items[:, t], h)
                return h.numpy()
            h = h.clone()
            for t in range(n_steps):
                rows = [r for r, n in enumerate(lengths) if n > t]
                idx = torch.tensor(rows, dtype=torch.long)
                items = torch.tensor([steps[r][t] for r in rows], dtype=torch.long)
                h.index_copy_(0, idx, self.model.step_packed(items, h.index_select(0, idx)))
            return h.numpy()

    def session_vectors(self, states: np.ndarray) -> np.ndarray:
        """The last layer's part of each state: what the items are scored against."""
        return states[:, self.state_size - self._last :]

    # -- ranking ---------------------------------------------------------------------------------
    def rank(self, h: np.ndarray, queries: Sequence[Query]) -> list[TopK]:
        """Top-k for each row of session vectors h [batch, layer] under its query's filters."""
        out: list[TopK | None] = [None] * len(queries)
        exact_rows: list[int] = []
        approx_rows: list[int] = []
        for r, q in enumerate(queries):
            if q.include is not None:
                out[r] = self._rank_columns(h[r], q)
            elif self.index is None or q.exact:
                exact_rows.append(r)
            else:
                approx_rows.append(r)
        if approx_rows:
            found = self._rank_approx(h[approx_rows], [queries[r] for r in approx_rows])
            for r, top in zip(approx_rows, found, strict=True):
                if top is None:  # filters left too few candidates: score everything
                    exact_rows.append(r)
                out[r] = top
        if exact_rows:
            exact_rows.sort()
            found = self._rank_exact(h[exact_rows], [queries[r] for r in exact_rows])
            for r, top in zip(exact_rows, found, strict=True):
                out[r] = top
        return out  # type: ignore[return-value]

    def _rank_exact(self, h: np.ndarray, queries: Sequence[Query]) -> list[TopK]:
        """Every item scored. With the compiled kernels: one pass over an 8-bit copy of the table
        for all sessions (a quarter of the memory traffic, which is the cost), then the items that the
        approximation's error bounds cannot rule out scored exactly: the float32 top-k, each
        session's answer the same bit for bit whatever traffic it is batched with. Otherwise MKL:
        one session as a row times the transposed copy (its fastest matrix-vector form); several as
        the [n_items, layer] table times the sessions' columns, with top-k down the columns."""
        k = min(max(q.k for q in queries), self.n_items)
        exclusions = [q.exclude for q in queries]
        with torch.inference_mode():
            ht = torch.from_numpy(np.ascontiguousarray(h))
            if self.score_table is not None:
                approx = self.score_table.screen(ht)
                _mask(approx, exclusions)
                values, picked = self.score_table.top_k(approx, ht, k)
            elif len(h) == 1 and self.out_t is not None:
                scores = torch.addmm(self.bias, ht, self.out_t)
                _mask(scores, exclusions)
                values, picked = torch.topk(scores, k)
            else:
                scores = torch.addmm(self.bias_column, self.weights, ht.T)
                _mask(scores, exclusions, by_column=True)
                values, picked = (t.T for t in torch.topk(scores, k, dim=0))
            return [_top(v, p, q.k) for v, p, q in zip(values.tolist(), picked.tolist(), queries, strict=True)]

    def _rank_approx(self, h: np.ndarray, queries: Sequence[Query]) -> list[TopK | None]:
        """Candidates from the index, re-scored exactly; None where filters leave fewer than k."""
        assert self.index is not None
        labels = self.index.search(h, [max(self.index.params.candidates, q.k) + len(q.exclude) for q in queries])
        with torch.inference_mode():
            lab = torch.from_numpy(labels)
            ht = torch.from_numpy(np.ascontiguousarray(h))
            if native.library() is not None:  # rows fetched ahead of their turn: they come from memory
                scores = native.score_items(self.weights, self.bias, ht, lab)
            else:
                flat, shape = lab.clamp(min=0).view(-1), (len(labels), labels.shape[1])
                rows = self.weights.index_select(0, flat).view(*shape, self._last)  # half the time of weights[lab]
                scores = torch.baddbmm(self.bias.index_select(0, flat).view(*shape, 1), rows, ht.unsqueeze(2)).squeeze(2)
                scores.masked_fill_(lab < 0, NEG_INF)
            for r, q in enumerate(queries):
                if len(q.exclude):
                    hit = np.isin(labels[r], q.exclude)
                    if hit.any():
                        scores[r].masked_fill_(torch.from_numpy(hit), NEG_INF)
            values, pos = torch.topk(scores, min(max(q.k for q in queries), labels.shape[1]))
            picked = lab.gather(1, pos)
            tops = [_top(v, p, q.k) for v, p, q in zip(values.tolist(), picked.tolist(), queries, strict=True)]
        return [top if len(top.indices) >= min(q.k, self._allowed(q)) else None for top, q in zip(tops, queries, strict=True)]

    def _allowed(self, q: Query) -> int:
        return self.n_items - (len(np.unique(q.exclude)) if len(q.exclude) else 0)

    def _rank_columns(self, h: np.ndarray, q: Query) -> TopK:
        """Allow-listed columns only: small, scored exactly."""
        cols = q.include
        if cols is None or len(cols) == 0:
            return TopK([], [], "model")
        with torch.inference_mode():
            col_t = torch.from_numpy(cols)
            scores = torch.addmv(self.bias.index_select(0, col_t), self.weights.index_select(0, col_t), torch.from_numpy(h))
            values, pos = torch.topk(scores, min(q.k, len(cols)))
            return _top(values.tolist(), col_t.index_select(0, pos).tolist(), q.k)

    def popular(self, q: Query) -> TopK:
        """Most clicked training items: the answer for a session with no item the model knows."""
        if q.include is not None:
            cols = q.include
            order = cols[np.lexsort((cols, -self.popularity[cols]))] if len(cols) else cols
        elif len(q.exclude):
            mask = np.ones(self.n_items, dtype=bool)
            mask[q.exclude] = False
            order = self.popular_order[mask[self.popular_order]]
        else:
            order = self.popular_order
        order = order[: q.k]
        return TopK(order.tolist(), self.popularity[order].tolist(), "popularity")

    def warm_up(self, steps: int = 3) -> None:
        """Run the hot path a few times (lazy initialisation), and refuse a model whose scores are not finite."""
        if steps <= 0:
            return
        k = min(20, self.n_items)
        items = [[s % self.n_items, (s + 1) % self.n_items] for s in range(steps)]
        zeros = np.zeros((steps, self.state_size), dtype=np.float32)
        # the finiteness check follows the model's own (PyTorch) steps: the kernels' fused multiply-adds
        # keep an overflowing sum at infinity where separate products and sums make it NaN
        reference = self.session_vectors(self.advance(zeros, items, kernels=False))
        h = self.session_vectors(self.advance(zeros, items))
        with torch.inference_mode():
            finite = bool(torch.isfinite(torch.addmm(self.bias, torch.from_numpy(np.ascontiguousarray(reference)), self.weights.T)).all())
        if not finite:
            raise ModelUnavailable(f"{self.source}: the model gives non-finite scores (its weights overflow); retrain it")
        queries = [Query(k, exclude=np.array([0], dtype=np.int64), exact=s % 2 == 1) for s in range(steps)]
        self.rank(h, queries)
        self.rank(h[:1], [Query(k, include=np.array([0, 1], dtype=np.int64))])
        self.popular(Query(k, exclude=np.array([0], dtype=np.int64)))

    # -- description -----------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """What GET /v1/model shows: everything about the model except the (large) item list."""
        meta = self.metadata
        return {
            "model_version": self.version,
            "n_items": self.n_items,
            "created": meta.get("created"),
            "format_version": meta.get("format_version"),
            "hyperparameters": self.hyperparameters,
            "training": dict(meta.get("training") or {}),
            "libraries": meta.get("libraries", {}),
            "loaded_at": self.loaded_at,
            "retrieval": self.describe_retrieval(),
        }

    def describe_retrieval(self) -> dict[str, Any]:
        if self.index is None:
            return {"mode": "exact", "reason": self.retrieval_note, "index": None}
        return {"mode": "index", "reason": "catalogue size or GRU4REC_RETRIEVAL", "index": self.index.describe()}


def _mask(scores: torch.Tensor, exclusions: Sequence[np.ndarray], by_column: bool = False) -> None:
    """Set the scores of session r's excluded items to -inf, for every session at once (sessions are
    the rows of `scores`, or its columns `by_column`)."""
    sessions = [np.full(len(ex), r, dtype=np.int64) for r, ex in enumerate(exclusions) if len(ex)]
    if sessions:
        where = (torch.from_numpy(np.concatenate(sessions)), torch.from_numpy(np.concatenate([ex for ex in exclusions if len(ex)])))
        scores.index_put_(where[::-1] if by_column else where, torch.tensor(NEG_INF))


def _top(values: list[float], indices: list[int], k: int) -> TopK:
    """The first k of a sorted row, without the masked (-inf) tail."""
    n = min(k, len(values))
    while n and values[n - 1] == NEG_INF:
        n -= 1
    return TopK(indices[:n], values[:n], "model")


def _check_counts(counts: Any, n_items: int, source: str) -> np.ndarray:
    try:
        array = np.asarray(counts)
        valid = array.ndim == 1 and len(array) == n_items and array.dtype.kind in "iu" and (array >= 0).all()
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ModelUnavailable(f"{source}: item_counts must be {n_items} non-negative integers, one per item id")
    return array.astype(np.int64)


def load_bundle(
    directory: str | os.PathLike[str],
    retrieval: RetrievalSettings | None = None,
    warmup_steps: int = 3,
    attempts: int = 3,
    build_threads: int = 1,
) -> ModelBundle:
    """Load, check and warm a checkpoint directory, with its top-k index when one is used.

    The trainer replaces the directory atomically, but a swap can still land between reading the
    metadata and the weights; the version is re-read after loading and the load retried if it moved.
    """
    directory = Path(directory)
    retrieval = retrieval or RetrievalSettings()
    last_error: UserError | None = None
    for _ in range(attempts):
        try:
            return _load_once(directory, retrieval, warmup_steps, build_threads)
        except _Moved:
            continue
        except UserError as exc:
            last_error = exc
        except Exception as exc:  # a malformed metadata.json or weights file: report, do not crash
            last_error = UserError(f"{directory}: cannot load the checkpoint ({type(exc).__name__}: {exc})")
        time.sleep(0.05)
    raise last_error or UserError(f"{directory}: the checkpoint kept changing while being loaded; try again")


class _Moved(Exception):
    """The directory was replaced while it was being loaded."""


def _load_once(directory: Path, retrieval: RetrievalSettings, warmup_steps: int, build_threads: int) -> ModelBundle:
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)  # the directory instance being loaded
    except OSError:
        dir_fd = None  # read_metadata below reports what is wrong
    try:
        checkpoint = load_checkpoint(directory, "cpu")
        again = read_metadata(directory).get("model_version")
        if str(again) != checkpoint.version:
            log.info("%s changed while loading (%s -> %s); loading again", directory, checkpoint.version, again)
            raise _Moved
        bundle = ModelBundle(checkpoint, str(directory))
        del checkpoint
        bundle.prepare_retrieval(retrieval, IndexCache(retrieval.cache_dir), dir_fd, build_threads)
        bundle.warm_up(warmup_steps)
    finally:
        if dir_fd is not None:
            os.close(dir_fd)
    log.info(
        "loaded model %s from %s: %d items, layers %s, top-k %s",
        bundle.version, directory, bundle.n_items, list(bundle.layer_sizes), bundle.describe_retrieval()["mode"],
    )
    return bundle
