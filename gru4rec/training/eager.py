"""The eager training step: autograd through the network and the loss, then the reference optimiser.

It is the specification every faster step is held to: the tests compare them over whole epochs, and
the self-check (gru4rec.training.selfcheck) runs it on a fast step's first mini-batches, with the
dropout masks that step drew, to catch a faulty fast path at run time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gru4rec.model.network import GRU4Rec, Hidden
from gru4rec.training.losses import LossFn
from gru4rec.training.optim import Gradients, Optimizer


@dataclass(frozen=True)
class Batch:
    """One mini-batch as a step consumes it: row i feeds inputs[i] and must predict targets[i]."""

    inputs: Tensor
    targets: Tensor
    negatives: Tensor  # the extra columns shared by every row
    log_q: Tensor | None  # logQ of every column (cross-entropy with logq > 0), else None
    valid: Tensor | None = None  # fixed-shape steps: the slots that feed an event (None: all rows)

    @property
    def columns(self) -> Tensor:
        return torch.cat([self.targets, self.negatives])

    def live(self) -> tuple[Batch, Tensor | None]:
        """The batch of the valid rows only, and their slots (None when every row is valid)."""
        if self.valid is None:
            return self, None
        rows = self.valid.nonzero().squeeze(1)
        log_q = self.log_q
        if log_q is not None:
            b = len(self.targets)
            log_q = torch.cat([log_q[:b].index_select(0, rows), log_q[b:]])
        return Batch(self.inputs.index_select(0, rows), self.targets.index_select(0, rows), self.negatives, log_q), rows


def forward_with_masks(model: GRU4Rec, inputs: Tensor, hidden: Hidden, masks: list[Tensor | None]) -> Hidden:
    """GRU4Rec.step (shared or separate embedding) with given dropout masks instead of fresh ones."""
    table = model.Wy if model.E is None else model.E
    x = table(inputs)
    if masks[0] is not None:
        x = x * masks[0]
    new: Hidden = []
    for cell, h, mask in zip(model.cells, hidden, masks[1:]):
        x = cell(x, h)
        if mask is not None:
            x = x * mask
        new.append(x)
    return new


def eager_step(
    model: GRU4Rec, optimizers: list[Optimizer], loss_fn: LossFn, batch_size: int, batch: Batch,
    hidden: Hidden, masks: list[Tensor | None] | None = None, reducer=None,
) -> tuple[Tensor, Hidden]:
    """One update by autograd; returns the (detached) loss and the new hidden state.

    masks: dropout masks to use (input embedding, then each layer) instead of drawing new ones.
    reducer: distributed training's gradient reducer (all ranks average before the update).
    """
    if masks is None:
        hidden = model.step(batch.inputs, hidden)
    else:
        hidden = forward_with_masks(model, batch.inputs, hidden, masks)
    O = model.score(hidden, batch.columns)
    loss = loss_fn(O, batch.log_q) / batch_size
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    loss.backward()
    if reducer is not None:
        optimizers[0].apply(reducer.reduce(Gradients.from_autograd(model.parameters())))
    else:
        for opt in optimizers:
            opt.step()
    return loss.detach(), [h.detach() for h in hidden]
