"""Faults put into the fixed-shape step on purpose, to show the self-check hands over to the eager step."""

from __future__ import annotations

import pytest

from gru4rec.training.fixed_step import FixedStep


def forget_the_output_bias(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make FixedStep skip the update of the output bias (By): a plausible bug that still trains."""
    original = FixedStep._update_rows

    def skip_the_bias(self, p, ids, grads, touched):
        if p is not self.model.By.weight:
            return original(self, p, ids, grads, touched)

    monkeypatch.setattr(FixedStep, "_update_rows", skip_the_bias)
