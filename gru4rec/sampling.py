"""Shared extra negatives, drawn proportional to support ** sample_alpha from a pre-drawn buffer.

Drawing millions of samples at once and handing out one row per mini-batch is far cheaper than
sampling every step; the buffer lives on the training device and is redrawn when used up.
"""

from __future__ import annotations

import torch
from torch import Tensor


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
        weights = item_counts.double().clamp_min(0) ** sample_alpha
        self.cdf = torch.cumsum(weights / weights.sum(), dim=0).float()
        self.cdf[-1] = 1.0 + 1e-6  # a draw of exactly 1.0 must still land in the last item
        self.rows = max(1, cache_size // max(n_sample, 1))
        self._buffer: Tensor | None = None
        self._next = 0
        self._state_before_refill: Tensor | None = None  # to redraw the same buffer on resume

    @property
    def device(self) -> torch.device:
        return self.cdf.device

    def _refill(self) -> None:
        if self.generator is not None:
            self._state_before_refill = self.generator.get_state()
        u = torch.rand(self.rows, self.n_sample, device=self.device, generator=self.generator)
        self._buffer = torch.searchsorted(self.cdf, u, right=True).clamp_max_(len(self.cdf) - 1)
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
