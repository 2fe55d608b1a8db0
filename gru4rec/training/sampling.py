"""Shared extra negatives, drawn proportional to support ** sample_alpha from a pre-drawn buffer.

Drawing millions of samples at once and handing out one row per mini-batch is far cheaper than
sampling every step; the buffer lives on the training device and is redrawn when used up. Draws
use Walker's alias method (a uniform bucket, then one comparison), which fills a 10-million-sample
buffer about four times faster than a binary search in the cumulative distribution (0.16 s against
0.69 s on one CPU core): the search cost ~0.15 ms per mini-batch, a fifth of a fused step.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from gru4rec.training import native


def alias_table(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vose's alias table: bucket k keeps item k with probability prob[k], else gives alias[k].

    Each of the n buckets is drawn with probability 1/n, so item i comes out with probability
    weights[i] / sum(weights) exactly (up to float rounding). Built by the compiled kernel when there
    is one (0.1 s for 1.8 million items), else by the same loop in Python (seconds, and a Python
    object per item); both give the same table bit for bit.
    """
    n = len(weights)
    scaled = weights.astype(np.float64) * (n / weights.sum())
    table = native.alias_table(scaled)
    return table if table is not None else alias_table_loop(scaled)


def alias_table_loop(scaled: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The specification (and fallback) of alias_table, on weights scaled to a mean of 1 (consumed)."""
    n = len(scaled)
    prob, alias = np.ones(n), np.arange(n)
    small = [i for i in range(n) if scaled[i] < 1.0]
    large = [i for i in range(n) if scaled[i] >= 1.0]
    while small and large:
        s, g = small.pop(), large.pop()
        prob[s], alias[s] = scaled[s], g
        scaled[g] -= 1.0 - scaled[s]
        (small if scaled[g] < 1.0 else large).append(g)
    return prob, alias  # buckets left in either list keep prob 1 (rounding leftovers)


REFILL_SLICE = 1 << 20  # negatives decided at once while the buffer is refilled (CPU)


class NegativeSampler:
    def __init__(
        self,
        item_counts: Tensor,
        n_sample: int,
        sample_alpha: float,
        cache_size: int = 10_000_000,
        generator: torch.Generator | None = None,
    ) -> None:
        self.n_sample = n_sample
        self.generator = generator
        weights = (item_counts.double().clamp_min(0) ** sample_alpha).cpu().numpy()
        prob, alias = alias_table(weights)
        self.prob = torch.from_numpy(prob).float().to(item_counts.device)
        self.alias = torch.from_numpy(alias).to(item_counts.device)
        self.rows = max(1, cache_size // max(n_sample, 1))
        self._buffer: Tensor | None = None
        self._next = 0
        self._state_before_refill: Tensor | None = None  # to redraw the same buffer on resume

    @property
    def device(self) -> torch.device:
        return self.prob.device

    def _refill(self) -> None:
        if self.generator is not None:
            self._state_before_refill = self.generator.get_state()
        self._buffer = None  # the old buffer goes before the new one is drawn
        shape = (self.rows, self.n_sample)
        bucket = torch.randint(len(self.prob), shape, device=self.device, generator=self.generator)
        # Then the uniforms, a slice of rows at a time on a CPU (its generator fills them in order, so the
        # stream is the one a single draw gives), each slice choosing between bucket and alias in place:
        # the temporaries are a slice's, not four more buffers' worth (400 MB for the default 10M).
        step = self.rows if self.device.type != "cpu" else max(1, REFILL_SLICE // self.n_sample)
        for lo in range(0, self.rows, step):
            part = bucket[lo : lo + step]
            flat = part.reshape(-1)
            keep = torch.rand(part.shape, device=self.device, generator=self.generator) < self.prob.index_select(0, flat).view(part.shape)
            part.copy_(torch.where(keep, part, self.alias.index_select(0, flat).view(part.shape)))
        self._buffer = bucket
        self._next = 0

    def next(self) -> Tensor:
        """The next n_sample negative item indices (an empty tensor when n_sample is 0)."""
        if self.n_sample == 0:
            return torch.empty(0, dtype=torch.long, device=self.device)
        if self._buffer is None or self._next >= self.rows:
            self._refill()
        assert self._buffer is not None
        sample = self._buffer[self._next]
        self._next += 1
        return sample

    def take(self, n: int) -> Tensor:
        """The next n rows of negatives at once ([n, n_sample]): the stream next() would hand out."""
        if self.n_sample == 0:
            return torch.empty(n, 0, dtype=torch.long, device=self.device)
        parts = []
        while n > 0:
            if self._buffer is None or self._next >= self.rows:
                self._refill()
            assert self._buffer is not None
            k = min(n, self.rows - self._next)
            parts.append(self._buffer[self._next : self._next + k])
            self._next += k
            n -= k
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def state_dict(self) -> dict[str, Tensor | int]:
        """Where the stream of negatives stands: a restored sampler continues it exactly."""
        if self.generator is None:
            return {}
        if self._state_before_refill is None:
            return {"generator": self.generator.get_state(), "next": -1}
        return {"generator": self._state_before_refill, "next": self._next}

    def load_state_dict(self, state: dict[str, Tensor | int]) -> None:
        if self.generator is None or not state:
            return
        self.generator.set_state(state["generator"].cpu())
        self._buffer, self._next, self._state_before_refill = None, 0, None
        if int(state["next"]) >= 0:
            self._refill()  # the same buffer as before the interruption...
            self._next = int(state["next"])  # ...continued where it stopped
