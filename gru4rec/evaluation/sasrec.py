"""SASRec as a SessionScorer: the state of a session is its item prefix (the last max_len clicks).

A GRU carries a fixed-size vector from click to click; a transformer has no such summary, so each
score re-reads the prefix: one causal forward pass over at most max_len clicks per row, of which
only the last position's output is used. Rows may hold prefixes of different lengths (padded on the
right); under `evaluate` all rows advance together, so they never do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gru4rec.model.sasrec import SASRec


@dataclass(frozen=True)
class PrefixState:
    """Item prefixes of a batch of sessions: items [rows, width] padded with model.pad, lengths [rows]."""

    items: Tensor
    lengths: Tensor

    @classmethod
    def empty(cls, n_sessions: int, device: torch.device) -> PrefixState:
        items = torch.empty(n_sessions, 0, dtype=torch.long, device=device)
        return cls(items, torch.zeros(n_sessions, dtype=torch.long, device=device))

    def append(self, items: Tensor, max_len: int, pad: int) -> PrefixState:
        """Append one click to each of the first len(items) rows (the others are dropped); a row
        that would exceed max_len forgets its oldest click."""
        n, width = len(items), self.items.shape[1]
        grown = torch.full((n, width + 1), pad, dtype=torch.long, device=self.items.device)
        grown[:, :width] = self.items[:n]
        lengths = self.lengths[:n]
        grown[torch.arange(n, device=grown.device), lengths] = items.to(grown.device)
        lengths = lengths + 1
        if width + 1 > max_len:  # only rows that reached max_len + 1 clicks fill the last column
            full = lengths > max_len
            grown[full, :-1] = grown[full, 1:].clone()
            grown = grown[:, :max_len]
            lengths = lengths.clamp_max(max_len)
        return PrefixState(grown, lengths)


class SASRecScorer:
    """SessionScorer over a SASRec model (see gru4rec.evaluation.protocol.SessionScorer)."""

    needs_times = False

    def __init__(self, model: SASRec) -> None:
        self.model = model
        self.n_items = model.n_items
        self.device = model.device

    def begin(self, n_sessions: int) -> PrefixState:
        return PrefixState.empty(n_sessions, self.device)

    def step(self, state: PrefixState, items: Tensor) -> PrefixState:
        return state.append(items, self.model.config.max_len, self.model.pad)

    def score(self, state: PrefixState) -> Tensor:
        return self.model.score(self.model.last_hidden(state.items, state.lengths))
