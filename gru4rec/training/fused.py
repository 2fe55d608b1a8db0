"""A hand-written GRU4Rec training step: the same update as autograd, with a fraction of the ops.

On a CPU a GRU4Rec mini-batch is small (B x H with H ~ 100), so the autograd path spends most of
its time on per-op overhead rather than arithmetic. This step writes the forward pass, the backward
pass through the GRU layers and the output layer, and the optimiser update out by hand:

  forward   x_0 = dropout(E[items]);  per layer: r, z = sigmoid(W_i x + b_i + W_h h + b_h) (r, z blocks)
            n = tanh(W_in x + b_in + r * (W_hn h + b_hn));  h' = n + z * (h - n);  x = dropout(h')
            O = x_L . W_y[cols]^T + b_y[cols]
  backward  dO from the loss (closed form for cross-entropy, autograd on O alone otherwise), then
            the chain rule through the output layer and the GRU cells. The incoming hidden state is
            detached (no BPTT), so no gradient flows into it.
  update    Adagrad + momentum: dense multi-tensor update for the GRU weights, sparse row update
            for the item tables (the same AdagradMomentum methods and state as the eager path).

It covers the `shared` and `separate` embedding modes with any number of layers and the Adagrad
optimiser; other settings use the autograd (eager) path, which stays the reference for correctness
(tests compare the two).

The element-wise parts and the products go through an `ops` object: TorchOps below (portable, any
device, and the specification) or, on a CPU, native.NativeOps, which does each of them in one
compiled pass (the output layer with cross-entropy as a single call). Tests hold all three paths,
eager, fused with TorchOps and fused with NativeOps, to the same results.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gru4rec.training import native
from gru4rec.training.losses import EPS, LossFn
from gru4rec.model.network import GRU4Rec, Hidden, dropout_mask
from gru4rec.training.optim import AdagradMomentum, Gradients
from gru4rec.training.settings import TrainingSettings


def supports(model: GRU4Rec, optimizer: torch.optim.Optimizer) -> bool:
    return model.mode in ("shared", "separate") and isinstance(optimizer, AdagradMomentum)


class TorchOps:
    """The element-wise parts of the step in portable PyTorch: the specification of native.NativeOps."""

    def __init__(self, n_items: int, device: torch.device) -> None:
        self.slot = torch.full((n_items,), -1, dtype=torch.long, device=device)

    def distinct(self, ids: Tensor, first_late: int) -> tuple[Tensor, Tensor, Tensor]:
        """Distinct ids (rows), where each id went (inverse), and which rows occur at or after first_late.

        Sort-free: torch.unique sorts (about 100 us for 2,000 ids on a CPU core); marking rows in a
        per-item slot table costs a third of that.
        """
        position = torch.arange(len(ids), device=ids.device)
        self.slot.index_put_((ids,), position)  # some occurrence of each id wins the slot
        representative = self.slot.index_select(0, ids)
        first = representative == position
        compact = torch.cumsum(first, 0).sub_(1)
        rows, inverse = ids[first], compact.index_select(0, representative)
        late = torch.zeros(len(rows), dtype=torch.bool, device=ids.device)
        late[inverse[first_late:]] = True
        return rows, inverse, late

    @staticmethod
    def mm(a: Tensor, b: Tensor, bias: Tensor | None = None) -> Tensor:
        return a @ b if bias is None else torch.addmm(bias, a, b)

    @staticmethod
    def gru_forward(gi: Tensor, gh: Tensor, h: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Gates after the two matrix products (blocks r, z, n): returns rz, n and the cell output."""
        H = h.shape[1]
        rz = torch.sigmoid(gi[:, : 2 * H] + gh[:, : 2 * H])
        n = torch.tanh(torch.addcmul(gi[:, 2 * H :], rz[:, :H], gh[:, 2 * H :]))
        out = torch.addcmul(n, rz[:, H:], h - n)
        if mask is not None:
            out = out * mask
        return rz, n, out

    @staticmethod
    def output_xe(
        x: Tensor, W_rows: Tensor, b_rows: Tensor, col_of: Tensor, log_q: Tensor | None,
        logq: float, scale: float, eps: float,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The output layer with cross-entropy, forward and backward: (loss, dx, dW_rows, db_rows).

        Scores are computed once per distinct item row and expanded to the columns, col_of[c]
        being column c's row; gradients of columns that share a row are summed into it.
        """
        O = torch.addmm(b_rows.unsqueeze(0), x, W_rows.t()).index_select(1, col_of)
        if log_q is not None:
            O = O - logq * log_q
        s = torch.softmax(O, dim=1)
        target = torch.diagonal(s)
        loss = -torch.log(target + eps).sum() * scale
        # d/dO of -log(s_ii + eps) = (s_ii / (s_ii + eps)) * (s_i - e_i)
        weight = (target / (target + eps)) * scale
        dO = s.mul_(weight.unsqueeze(1))
        torch.diagonal(dO).sub_(weight)
        return (loss, *output_backward(dO, col_of, x, W_rows))

    @staticmethod
    def gru_backward(
        dx: Tensor, mask: Tensor | None, h: Tensor, rz: Tensor, n: Tensor, gh: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """From d loss / d output to the gradients of gi and gh, and their column sums (bias gradients)."""
        H = h.shape[1]
        r, z = rz[:, :H], rz[:, H:]
        if mask is not None:
            dx = dx * mask
        dpre_n = dx * (1.0 - z) * (1.0 - n * n)
        d_rz = torch.cat([dpre_n * gh[:, 2 * H :], dx * (h - n)], dim=1) * rz * (1.0 - rz)
        dgi = torch.cat([d_rz, dpre_n], dim=1)
        dgh = torch.cat([d_rz, dpre_n * r], dim=1)
        return dgi, dgh, dgi.sum(0), dgh.sum(0)


def output_backward(dO: Tensor, col_of: Tensor, x: Tensor, W_rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """From d loss / d scores of the columns to (dx, dW_rows, db_rows): columns summed per item row."""
    dO_rows = torch.zeros(len(x), len(W_rows), dtype=dO.dtype, device=dO.device).index_add_(1, col_of, dO)
    return dO_rows @ W_rows, dO_rows.t() @ x, dO_rows.sum(dim=0)


def make_ops(n_items: int, device: torch.device) -> TorchOps | native.NativeOps:
    """The compiled kernels on a CPU where they can be built, the PyTorch ones otherwise."""
    if device.type == "cpu" and native.library() is not None:
        return native.NativeOps(n_items)
    return TorchOps(n_items, device)


class FusedStep:
    def __init__(
        self, model: GRU4Rec, optimizer: AdagradMomentum, settings: TrainingSettings, loss_fn: LossFn,
        ops: TorchOps | native.NativeOps | None = None,
    ) -> None:
        self.model = model
        device = model.Wy.weight.device
        self.ops = ops if ops is not None else make_ops(model.n_items, device)
        self.opt = optimizer
        self.loss_name = settings.loss
        self.loss_fn = loss_fn
        self.logq = settings.logq
        self.batch_size = settings.batch_size
        # dropout is part of the network's definition, which this step re-implements
        self.p_embed = model.config.dropout_p_embed
        self.p_hidden = model.config.dropout_p_hidden
        self.dense = [t for cell in model.cells for t in (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)]

    @torch.no_grad()
    def __call__(self, inputs: Tensor, columns: Tensor, hidden: Hidden, log_q: Tensor | None = None) -> tuple[Tensor, Hidden]:
        """Train on one mini-batch whose targets are columns[:B]; returns (loss, new hidden)."""
        loss, hidden, grads = self.gradients(inputs, columns, hidden, log_q)
        self.opt.apply(grads)
        return loss, hidden

    @torch.no_grad()
    def gradients(
        self, inputs: Tensor, columns: Tensor, hidden: Hidden, log_q: Tensor | None = None
    ) -> tuple[Tensor, Hidden, Gradients]:
        """Forward and backward for one mini-batch: (loss, new hidden, gradients by hand)."""
        model, ops = self.model, self.ops
        b = len(inputs)
        Wy, By = model.Wy.weight, model.By.weight
        shared = model.E is None
        # Work on each distinct item row once: the sampled columns repeat popular items many times.
        # Scores are computed per distinct row and then expanded to the B + n_sample columns.
        rows, inverse, is_column = ops.distinct(torch.cat([inputs, columns]) if shared else columns, b if shared else 0)
        col_of = inverse[b:] if shared else inverse
        W_rows = Wy.index_select(0, rows)
        b_rows = By.index_select(0, rows).squeeze(1)
        if shared:
            x = W_rows.index_select(0, inverse[:b])
        else:
            x = model.E.weight.index_select(0, inputs)

        # forward, keeping what the backward pass needs
        embed_mask = dropout_mask(x, self.p_embed)
        if embed_mask is not None:
            x = x * embed_mask
        x, saved, new_hidden = self._gru_forward(x, hidden)
        # the output layer and the loss, forward and backward
        scale = 1.0 / self.batch_size
        if self.loss_name == "cross-entropy":
            q = log_q if self.logq > 0 else None
            loss, dx, dW_rows, db_rows = ops.output_xe(x, W_rows, b_rows, col_of, q, self.logq, scale, EPS)
        else:
            loss, dx, dW_rows, db_rows = self._output_autograd(x, W_rows, b_rows, col_of, log_q, scale)
        # backward through the GRU layers, last first
        dense_grads: list[Tensor] = []
        for cell, (x_in, h, rz, n, gh, mask) in zip(reversed(model.cells), reversed(saved)):
            dgi, dgh, dbi, dbh = ops.gru_backward(dx, mask, h, rz, n, gh)
            dense_grads = [ops.mm(dgi.t(), x_in), ops.mm(dgh.t(), h), dbi, dbh] + dense_grads
            dx = ops.mm(dgi, cell.weight_ih)
        if embed_mask is not None:
            dx = dx * embed_mask

        # rows the reference touches: the bias of an item that was only an input is not touched
        grads = Gradients(dense=list(zip(self.dense, dense_grads)), unique=True)
        if shared:
            dW_rows.index_add_(0, inverse[:b], dx)
            grads.sparse.append((Wy, rows, dW_rows))
            keep = is_column.nonzero().squeeze(1)
            grads.sparse.append((By, rows.index_select(0, keep), db_rows.index_select(0, keep).unsqueeze(1)))
        else:
            E_rows, E_inverse = torch.unique(inputs, return_inverse=True)  # B ids: sorting is cheap
            dE = torch.zeros(len(E_rows), dx.shape[1], dtype=dx.dtype, device=dx.device).index_add_(0, E_inverse, dx)
            grads.sparse += [(model.E.weight, E_rows, dE), (Wy, rows, dW_rows), (By, rows, db_rows.unsqueeze(1))]
        return loss, new_hidden, grads

    def _gru_forward(self, x: Tensor, hidden: Hidden) -> tuple[Tensor, list[tuple], Hidden]:
        """The GRU layers forward: (last output, what each layer's backward needs, new hidden)."""
        ops, saved, new_hidden = self.ops, [], []
        for cell, h in zip(self.model.cells, hidden):
            gi = ops.mm(x, cell.weight_ih.t(), cell.bias_ih)
            gh = ops.mm(h, cell.weight_hh.t(), cell.bias_hh)
            mask = dropout_mask(h, self.p_hidden)
            rz, n, out = ops.gru_forward(gi, gh, h, mask)
            saved.append((x, h, rz, n, gh, mask))
            new_hidden.append(out)
            x = out
        return x, saved, new_hidden

    def _output_autograd(
        self, x: Tensor, W_rows: Tensor, b_rows: Tensor, col_of: Tensor, log_q: Tensor | None, scale: float
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The output layer for the other losses: autograd on the score matrix alone."""
        O_rows = torch.addmm(b_rows.unsqueeze(0), x, W_rows.t())
        with torch.enable_grad():
            leaf = O_rows.index_select(1, col_of).requires_grad_(True)
            loss = self.loss_fn(leaf, log_q) * scale
            loss.backward()
        return (loss.detach(), *output_backward(leaf.grad, col_of, x, W_rows))
