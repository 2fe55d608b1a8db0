"""A self-check that makes a faulty fast training step harmless.

The fast steps (fused, fixed-shape, CUDA-graph replays) re-implement the eager step by hand, on
kernels and compilers that differ from machine to machine. So on its first mini-batches a Trainer
runs the fast step, undoes it, runs the eager step on the same inputs and dropout masks, and compares
what each changed: the loss, the new hidden state, and every touched weight and optimiser state. If
they differ beyond rounding (or the fast step raises), training continues on the eager step, from
the eager step's result, with one clear warning; if they agree it continues from the fast step's.

Undoing a step restores copies of what it may change: the mini-batch's rows of each item table, the
dense GRU weights, and their optimiser state (never a whole item table, which may hold millions of rows).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from gru4rec.model.network import GRU4Rec, Hidden
from gru4rec.training.optim import AdagradMomentum, sparse_parameters

CHECKED_STEPS = 2  # mini-batches compared (a CUDA graph's replays get as many again)
# A difference counts when it exceeds this share of what the eager step changed in the same tensor
# (rounding differences of float32 steps stay below 1e-4 of it), or of the value itself for the loss.
RELATIVE = 2e-3


class Snapshot:
    """What one step may change, copied: rows `ids` of the item tables, every dense weight, their state."""

    def __init__(self, model: GRU4Rec, optimizer: AdagradMomentum, ids: Tensor) -> None:
        self.model, self.optimizer = model, optimizer
        self.ids = torch.unique(ids)
        sparse = {id(p) for p in sparse_parameters(model)}
        self.tensors: list[tuple[str, Tensor, bool]] = []  # (name, tensor, by rows)
        for name, p in model.named_parameters():
            state = optimizer.state_for(p)
            rows = id(p) in sparse
            self.tensors += [(name, p, rows)] + [(f"{name}.{k}", v, rows) for k, v in sorted(state.items())]
        self.saved = self.values()

    @torch.no_grad()
    def values(self) -> dict[str, Tensor]:
        return {name: (t.index_select(0, self.ids) if rows else t.clone()) for name, t, rows in self.tensors}

    @torch.no_grad()
    def restore(self, values: dict[str, Tensor] | None = None) -> None:
        """Put back the state from before the step (or `values`, taken by values() after one)."""
        values = self.saved if values is None else values
        for name, t, rows in self.tensors:
            if rows:
                t.index_copy_(0, self.ids, values[name])
            else:
                t.copy_(values[name])


def difference(name: str, fast: Tensor, eager: Tensor, before: Tensor | None = None) -> str | None:
    """Why fast and eager differ beyond rounding, or None. With `before`, relative to eager's change."""
    if not bool(torch.isfinite(fast).all()) and bool(torch.isfinite(eager).all()):
        return f"{name} is not finite"
    if before is not None:  # what the eager step left exactly as it was, the fast step must not move
        untouched = eager == before
        if bool((fast[untouched] != before[untouched]).any()):
            return f"{name} changed where the eager step left it untouched"
    fast, eager = fast.detach().double(), eager.detach().double()
    scale = (eager - before.double()).abs().max() if before is not None else eager.abs().max()
    gap = (fast - eager).abs().max() if fast.numel() else torch.zeros(())
    if float(gap) > RELATIVE * float(scale) + 1e-7:
        return f"{name} differs by {float(gap):.3g} (the eager step's scale: {float(scale):.3g})"
    return None


@dataclass
class Outcome:
    loss: Tensor
    hidden: Hidden
    failure: str | None  # why the fast step cannot be trusted, or None


def check_step(
    model: GRU4Rec, optimizer: AdagradMomentum, ids: Tensor,
    fast: Callable[[], tuple[Tensor, Hidden, list[Tensor | None]]],
    eager: Callable[[list[Tensor | None] | None], tuple[Tensor, Hidden]],
    rows: Tensor | None = None,
) -> Outcome:
    """Run `fast` then, from the same state, `eager` with the masks fast drew, and compare.

    The result kept is fast's when they agree (so that a checked run is the very run an unchecked
    one would be) and eager's when they do not. fast() -> (loss, new hidden, dropout masks);
    eager(masks) -> (loss, new hidden). `ids`: the item rows the step may touch; `rows`: the
    hidden-state rows that count (None: all).
    """
    snapshot = Snapshot(model, optimizer, ids)
    rng = torch.random.get_rng_state()
    try:
        loss_f, hidden_f, masks = fast()
    except Exception as exc:  # noqa: BLE001 - whatever breaks in a fast path, the eager step must go on
        snapshot.restore()
        torch.random.set_rng_state(rng)
        loss, hidden = eager(None)
        return Outcome(loss, hidden, f"it raised {type(exc).__name__}: {exc}")
    after_fast = snapshot.values()
    hidden_f = [h.clone() for h in hidden_f]
    snapshot.restore()
    loss, hidden = eager(masks)
    after_eager = snapshot.values()
    problems = [difference("the loss", loss_f, loss)]
    for layer, (hf, he) in enumerate(zip(hidden_f, hidden)):
        keep = slice(None) if rows is None else rows
        problems.append(difference(f"hidden state {layer}", hf[keep], he[keep]))
    problems += [difference(name, after_fast[name], after_eager[name], snapshot.saved[name]) for name in after_eager]
    failure = next((p for p in problems if p is not None), None)
    if failure is not None:
        return Outcome(loss, hidden, failure)
    snapshot.restore(after_fast)
    return Outcome(loss_f, hidden_f, None)
