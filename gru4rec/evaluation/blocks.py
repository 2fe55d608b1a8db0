"""One prediction step of full-ranking evaluation, scored a block of items at a time.

A step ranks the relevant item of every row among all items. The whole score matrix is rows x
catalogue (512 x 1.8M float32 is 3.7 GB), so the items are scored in blocks that hold a bounded
number of scores, and each block adds to the per-row counts (items scored above, or equal to, the
relevant one) and to the running top-k lists; nothing of the size of the catalogue is kept per row.

Counting needs the relevant item's score before the first block, so it is computed up front from
the relevant columns alone (`StepScores.columns`), then checked against the value the relevant item
gets in its own block; a row where the two differ (a matrix library whose sums depend on the shape)
is counted again with the block's value. The result is therefore exactly what one block holding the
whole catalogue gives, whatever the block size.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

BLOCK_SCORES = 1 << 24  # scores held at once (64 MiB of float32); blocks have at least MIN_BLOCK items
MIN_BLOCK = 4096


def block_items(rows: int, n_items: int, item_block: int | None = None) -> int:
    """Items per block: `item_block`, or as many as BLOCK_SCORES allows for `rows` rows."""
    size = item_block if item_block is not None else max(MIN_BLOCK, BLOCK_SCORES // max(rows, 1))
    return max(1, min(int(size), n_items))


class StepScores:
    """The scores of rows `rows` of a scorer's state, for a block of items or for given columns.

    A scorer may score blocks itself (`score_block(state, rows, lo, hi)` and `score_columns(state,
    rows, columns)`, as ModelScorer does); otherwise its full `score(state)` is computed once and sliced.
    """

    def __init__(self, scorer: Any, state: Any, rows: slice, device: torch.device) -> None:
        self.scorer, self.state, self.rows, self.device = scorer, state, rows, device
        self.blockwise = hasattr(scorer, "score_block") and hasattr(scorer, "score_columns")
        self._full: Tensor | None = None

    def _all(self) -> Tensor:
        if self._full is None:
            full = self.scorer.score(self.state)[self.rows]
            self._full = full.to(device=self.device, dtype=torch.float32)
        return self._full

    def block(self, lo: int, hi: int) -> Tensor:
        """Scores [rows, hi - lo] of items lo..hi-1 (never written into)."""
        if self.blockwise:
            return self.scorer.score_block(self.state, self.rows, lo, hi).to(device=self.device, dtype=torch.float32)
        return self._all()[:, lo:hi]

    def columns(self, columns: Tensor) -> Tensor:
        """Scores [rows, c] of items columns[r, j] for row r."""
        if self.blockwise:
            return self.scorer.score_columns(self.state, self.rows, columns).to(device=self.device, dtype=torch.float32)
        return self._all().gather(1, columns)


class TopLists:
    """Each row's top-k items (for coverage/popularity), merged block by block. Ties: torch.topk's choice."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.values: Tensor | None = None
        self.index: Tensor | None = None

    def add(self, scores: Tensor, lo: int) -> None:
        values, index = torch.topk(scores, min(self.k, scores.shape[1]), dim=1)
        index = index + lo
        if self.values is not None:
            values, index = torch.cat([self.values, values], 1), torch.cat([self.index, index], 1)
            values, best = torch.topk(values, min(self.k, values.shape[1]), dim=1)
            index = index.gather(1, best)
        self.values, self.index = values, index


def _count(scores: Tensor, target: Tensor, ties: str) -> tuple[Tensor, Tensor | None]:
    """Per row: #scores >= target (conservative) or #scores > target, and #scores == target (median)."""
    if scores.device.type == "cpu":  # numpy counts a boolean matrix into int32 several times faster
        s, t = scores.numpy(), target.numpy()[:, None]
        above = (np.greater_equal if ties == "conservative" else np.greater)(s, t).sum(1, dtype=np.int32)
        equal = np.equal(s, t).sum(1, dtype=np.int32) if ties == "median" else None
        return torch.from_numpy(above), None if equal is None else torch.from_numpy(equal)
    t = target.unsqueeze(1)
    above = (scores >= t if ties == "conservative" else scores > t).sum(1, dtype=torch.int32)
    return above, (scores == t).sum(1, dtype=torch.int32) if ties == "median" else None


def _mask_seen(scores: Tensor, seen: Tensor | None, lo: int) -> Tensor:
    """A copy of the block with the items in `seen` (per row) at -inf; the block itself when none fall in it."""
    if seen is None:
        return scores
    inside = (seen >= lo) & (seen < lo + scores.shape[1])
    if not bool(inside.any()):
        return scores
    rows, cols = torch.nonzero(inside, as_tuple=True)
    scores = scores.clone()
    scores[rows, seen[rows, cols] - lo] = float("-inf")
    return scores


def relevant_scores(scores: StepScores, columns: Tensor, valid: Tensor, seen: Tensor | None) -> Tensor:
    """Score of each row's relevant item: the best of its relevant columns (seen ones at -inf)."""
    values = scores.columns(columns).masked_fill(~valid, float("-inf"))
    if seen is not None:
        was_seen = (columns.unsqueeze(2) == seen.unsqueeze(1)).any(dim=2)
        values = values.masked_fill(was_seen, float("-inf"))
    return values.amax(dim=1)


def _in_block_best(block: Tensor, columns: Tensor, valid: Tensor, lo: int) -> Tensor:
    """Best score, within this block, of each row's relevant columns that lie in it (-inf: none)."""
    inside = valid & (columns >= lo) & (columns < lo + block.shape[1])
    values = block.gather(1, torch.where(inside, columns - lo, 0))
    return values.masked_fill(~inside, float("-inf")).amax(dim=1)


def rank_step(
    scores: StepScores, columns: Tensor, valid: Tensor, seen: Tensor | None, ties: str, n_items: int,
    block: int, lists: TopLists | None = None,
) -> Tensor:
    """Ranks (1 = best, by tie mode) of each row's relevant item: the best-scored of columns[r][valid[r]].

    Items in seen[r] score -inf (exclude_seen); a non-finite relevant score gets the worst rank.
    """
    target = relevant_scores(scores, columns, valid, seen)
    above, equal, in_block = _count_blocks(scores, target, columns, valid, seen, ties, n_items, block, lists)
    differs = (in_block != target) & (torch.isfinite(in_block) | torch.isfinite(target))
    if bool(differs.any()):  # count those rows again against the value their item has in its block
        target = torch.where(differs, in_block, target)
        again_above, again_equal, _ = _count_blocks(scores, target, columns, valid, seen, ties, n_items, block, None)
        above = torch.where(differs, again_above, above)
        equal = torch.where(differs, again_equal, equal) if equal is not None else None
    if ties == "conservative":
        ranks = above.float()
    elif ties == "standard":
        ranks = above.float() + 1
    else:
        ranks = above.float() + 1 + 0.5 * (equal.float() - 1)
    return torch.where(torch.isfinite(target), ranks, torch.full_like(ranks, n_items))


def _count_blocks(scores, target, columns, valid, seen, ties, n_items, block, lists):
    above = equal = None
    in_block = torch.full_like(target, float("-inf"))
    cpu_target = target.cpu()
    for lo in range(0, n_items, block):
        values = _mask_seen(scores.block(lo, min(lo + block, n_items)), seen, lo)
        a, e = _count(values, cpu_target if values.device.type == "cpu" else target, ties)
        above = a if above is None else above + a
        equal = e if equal is None or e is None else equal + e
        in_block = torch.maximum(in_block, _in_block_best(values, columns, valid, lo))
        if lists is not None:
            lists.add(values, lo)
    return above.to(target.device), None if equal is None else equal.to(target.device), in_block
