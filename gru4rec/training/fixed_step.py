"""The training step on fixed shapes: what a CUDA graph can capture.

On a GPU, GRU4Rec's step is dozens of tiny kernels, and launching them from Python costs more than
running them (the authors' code manages ~400 mini-batches/s whatever the batch size). A CUDA graph
launches a recorded sequence of kernels at once, but only if every step has the same shapes, keeps
its tensors at the same addresses and never waits for the host. So this step:

  - keeps B slots and C = B + n_sample score columns every step: a finished slot of the epoch's
    shrinking tail stays, masked (its row counts for nothing, its target column is neither a target
    nor a negative of any row, and its items are not touched by the update);
  - reads its mini-batch from the epoch schedule kept on the device (gru4rec.training.schedule) and
    its negatives from a device block of the sampler's stream, through step counters on the device;
  - scores all C columns (no distinct-rows compaction, whose size depends on the data) and updates
    the item rows with a fixed-shape sparse Adagrad: duplicate ids are summed by a segment sum, and
    every occurrence of an id then writes the same new value, so the result does not depend on which
    write lands last.

The arithmetic is FusedStep's (shared forward/backward code and the closed-form losses), and it
computes the eager step's update: the tests run whole epochs against the eager Trainer on the CPU,
where dropout masks are drawn for the live rows only so that both draw the same random numbers (in a
CUDA graph they are drawn for all B slots; the masks of finished slots are unused). It supports what
FusedStep supports with cross-entropy or BPR-max; FixedEpoch drives it through an epoch, replaying
it as one CUDA graph where it can.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gru4rec.model.network import GRU4Rec, Hidden, dropout_mask
from gru4rec.training.fused import FusedStep, output_loss
from gru4rec.training.losses import LossFn
from gru4rec.training.optim import AdagradMomentum, Optimizer
from gru4rec.training.settings import TrainingSettings


def supports(model: GRU4Rec, optimizer: Optimizer, settings: TrainingSettings) -> bool:
    return (model.mode in ("shared", "separate") and isinstance(optimizer, AdagradMomentum)
            and output_loss(settings).closed_form)


class FixedStep(FusedStep):
    """One update on B slots; the slots' hidden state lives in `self.hidden` and is updated in place."""

    def __init__(
        self, model: GRU4Rec, optimizer: AdagradMomentum, settings: TrainingSettings, loss_fn: LossFn,
        log_counts: Tensor, n_slots: int, compact_masks: bool,
    ) -> None:
        super().__init__(model, optimizer, settings, loss_fn)
        if not self.loss.closed_form:
            raise ValueError(f"the fixed-shape step needs a closed-form loss, not {settings.loss}")
        device = model.Wy.weight.device
        self.log_counts = log_counts
        self.logq, self.alpha = settings.logq, settings.sample_alpha
        self.compact_masks = compact_masks
        self.hidden = model.init_hidden(n_slots, device)
        self.h0: Hidden = []  # the last step's incoming state, after resets (for the self-check)
        self.all_negatives = torch.ones(settings.n_sample, dtype=torch.bool, device=device)
        self.slot = torch.zeros(model.n_items, dtype=torch.long, device=device)  # segment sums' id -> representative
        self.arange = torch.arange(2 * n_slots + settings.n_sample, device=device)
        self._live: Tensor | None = None

    @torch.no_grad()
    def run(self, inputs: Tensor, targets: Tensor, valid: Tensor, reset: Tensor, negatives: Tensor) -> Tensor:
        """One step: slot j feeds inputs[j] -> targets[j] where valid[j], after zeroing its state where
        reset[j]. Returns the loss (0-d, on the device)."""
        keep = (valid & ~reset).unsqueeze(1).to(self.hidden[0].dtype)
        self.h0 = [h * keep for h in self.hidden]
        self._live = valid.nonzero().squeeze(1) if self.compact_masks else None
        columns = torch.cat([targets, negatives])
        cols = torch.cat([valid, self.all_negatives])
        Wy, By = self.model.Wy.weight, self.model.By.weight
        table = Wy if self.model.E is None else self.model.E.weight
        layers, new_hidden = self._forward(table.index_select(0, inputs), self.h0)
        x, W_cols = new_hidden[-1], Wy.index_select(0, columns)
        O = torch.addmm(By.index_select(0, columns).t(), x, W_cols.t())
        loss, dO = self.loss.grad(O, self.log_q(targets, negatives), 1.0 / self.batch_size, rows=valid, cols=cols)
        dense_grads, dx = self._backward(dO @ W_cols, layers)
        self.opt.dense_update(self.dense, dense_grads)
        dW_cols, db_cols = dO.t() @ x, dO.sum(dim=0, keepdim=True).t()
        if self.model.E is None:
            self._update_rows(Wy, torch.cat([inputs, columns]), torch.cat([dx, dW_cols]), torch.cat([valid, cols]))
        else:
            self._update_rows(self.model.E.weight, inputs, dx, valid)
            self._update_rows(Wy, columns, dW_cols, cols)
        self._update_rows(By, columns, db_cols, cols)
        for h, new in zip(self.hidden, new_hidden):
            h.copy_(new)
        return loss

    def _mask(self, like: Tensor, p: float) -> Tensor | None:
        """Dropout masks: for the live rows only when compact (the eager step's random numbers), else all slots."""
        if self._live is None or p <= 0:
            return dropout_mask(like, p)
        mask = torch.zeros_like(like)
        mask[self._live] = dropout_mask(like.index_select(0, self._live), p)
        return mask

    def log_q(self, targets: Tensor, negatives: Tensor) -> Tensor | None:
        if self.loss.name != "cross-entropy" or self.logq <= 0:
            return None
        return torch.cat([self.log_counts.index_select(0, targets), self.alpha * self.log_counts.index_select(0, negatives)])

    def _update_rows(self, p: Tensor, ids: Tensor, grads: Tensor, touched: Tensor) -> None:
        """AdagradMomentum.unique_rows_update on rows `ids` (repeats allowed), on fixed shapes.

        Rows of repeated ids get their summed gradient; only rows with a touched occurrence change
        (a finished slot's input and target are not touched, as the eager step never sees them).
        """
        n = len(ids)
        self.slot.index_put_((ids,), self.arange[:n])  # one occurrence of each id wins: its representative
        rep = self.slot.index_select(0, ids)
        g = torch.zeros_like(grads).index_add_(0, rep, grads).index_select(0, rep)
        hits = torch.zeros(n, dtype=grads.dtype, device=grads.device).index_add_(0, rep, touched.to(grads.dtype))
        hit = hits.index_select(0, rep).gt(0).unsqueeze(1)
        state, opt = self.opt.state_for(p), self.opt
        w, acc = p.index_select(0, ids), state["acc"].index_select(0, ids)
        new_acc = torch.addcmul(acc, g, g)
        update = g.div_(new_acc.add(opt.eps).sqrt_()).mul_(-opt.lr)
        if opt.momentum > 0:
            mom = state["mom"].index_select(0, ids)
            update = mom.mul(opt.momentum).add_(update)
            state["mom"].index_copy_(0, ids, torch.where(hit, update, mom))
        state["acc"].index_copy_(0, ids, torch.where(hit, new_acc, acc))
        p.index_copy_(0, ids, torch.where(hit, w + update, w))
