"""A hand-written GRU4Rec training step: the same update as autograd, with a fraction of the ops.

On a CPU a GRU4Rec mini-batch is small (B x H with H ~ 100), so the autograd path spends most of
its time on per-op overhead rather than arithmetic. This step writes the forward pass, the backward
pass through the GRU layers and the output layer, and the optimiser update out by hand:

  forward   x_0 = dropout(E[items]);  per layer: r, z = sigmoid(W_i x + b_i + W_h h + b_h) (r, z blocks)
            n = tanh(W_in x + b_in + r * (W_hn h + b_hn));  h' = n + z * (h - n);  x = dropout(h')
            O = x_L . W_y[cols]^T + b_y[cols]
  backward  dO from the loss (closed form for cross-entropy and BPR-max, autograd on O alone for the
            others), then the chain rule through the output layer and the GRU cells. The incoming
            hidden state is detached (no BPTT), so no gradient flows into it.
  update    Adagrad + momentum: dense multi-tensor update for the GRU weights, sparse row update
            for the item tables (the same AdagradMomentum methods and state as the eager path).

It covers the `shared` and `separate` embedding modes with any number of layers and the Adagrad
optimiser; other settings use the autograd (eager) path, which stays the reference for correctness
(tests compare the two). Mini-batches keep their natural size (the tail of an epoch shrinks), and
scores are computed once per distinct item row: the right shape for a CPU. The fixed-shape variant
for CUDA graphs is gru4rec.training.fixed_step.

The matrix products are PyTorch's; the element-wise parts go through an `ops` object: TorchOps below
(portable, any device, and the specification) or, on a CPU, native.NativeOps, which does each of
them in one compiled pass. Tests hold all three paths, eager, fused with TorchOps and fused with
NativeOps, to the same results.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gru4rec.model.network import GRU4Rec, Hidden, dropout_mask
from gru4rec.training import native
from gru4rec.training.losses import LossFn, OutputLoss
from gru4rec.training.optim import AdagradMomentum, Gradients, Optimizer
from gru4rec.training.settings import TrainingSettings


def supports(model: GRU4Rec, optimizer: Optimizer) -> bool:
    return model.mode in ("shared", "separate") and isinstance(optimizer, AdagradMomentum)


def output_loss(settings: TrainingSettings) -> OutputLoss:
    return OutputLoss(settings.loss, settings.logq, settings.elu_param, settings.bpreg)


class TorchProducts:
    """torch.mm and torch.addmm behind the interface of native.ProductChoice."""

    def __call__(self, A: Tensor, B: Tensor) -> Tensor:
        return torch.mm(A, B)

    def add(self, bias: Tensor, A: Tensor, B: Tensor) -> Tensor:
        return torch.addmm(bias, A, B)


class TorchOps:
    """The element-wise parts of the step in portable PyTorch: the specification of native.NativeOps."""

    def __init__(self, n_items: int, device: torch.device) -> None:
        self.slot = torch.full((n_items,), -1, dtype=torch.long, device=device)
        self.gru_mm = TorchProducts()

    def distinct(
        self, ids: Tensor, first_late: int, W: Tensor | None = None, b: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
        """Distinct ids (rows), where each id went (inverse), which rows occur at or after first_late,
        and (given tables W and b) those rows of W and b.

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
        if W is None or b is None:
            return rows, inverse, late, None, None
        return rows, inverse, late, W.index_select(0, rows), b.index_select(0, rows)

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
    def output_grad(
        loss: OutputLoss, x: Tensor, W_rows: Tensor, b_rows: Tensor, col_of: Tensor, log_q: Tensor | None,
        scale: float,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
        """The output layer with a closed-form loss, forward and backward: (loss, dx, dW_rows, db_rows).

        Scores are computed once per distinct item row and expanded to the columns, col_of[c]
        being column c's row; gradients of columns that share a row are summed into it. None for
        the losses without a closed form (the step then uses autograd on the scores).
        """
        if not loss.closed_form:
            return None
        O = torch.addmm(b_rows.unsqueeze(0), x, W_rows.t()).index_select(1, col_of)
        value, dO = loss.grad(O, log_q, scale)
        return (value, *output_backward(dO, col_of, x, W_rows))

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


@dataclass
class _Rows:
    """The distinct item rows of one mini-batch and where each input and column went."""

    rows: Tensor  # distinct item indices
    inverse: Tensor  # position in rows of each id (inputs first in the shared mode, then columns)
    is_column: Tensor  # rows that are score columns (not only inputs)
    col_of: Tensor  # each column's position in rows
    W: Tensor  # W_y's rows
    b: Tensor  # b_y's rows


@dataclass
class _Layer:
    """What one GRU layer's backward pass needs from its forward pass."""

    x: Tensor
    h: Tensor
    rz: Tensor
    n: Tensor
    gh: Tensor
    mask: Tensor | None


class FusedStep:
    def __init__(
        self, model: GRU4Rec, optimizer: AdagradMomentum, settings: TrainingSettings, loss_fn: LossFn,
        ops: TorchOps | native.NativeOps | None = None,
    ) -> None:
        self.model = model
        device = model.Wy.weight.device
        self.ops = ops if ops is not None else make_ops(model.n_items, device)
        self.opt = optimizer
        self.loss = output_loss(settings)
        self.loss_fn = loss_fn
        self.batch_size = settings.batch_size
        # dropout is part of the network's definition, which this step re-implements
        self.p_embed = model.config.dropout_p_embed
        self.p_hidden = model.config.dropout_p_hidden
        self.dense = [t for cell in model.cells for t in (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)]
        self.masks: list[Tensor | None] = []  # the last step's dropout masks: input, then each layer

    @torch.no_grad()
    def __call__(self, inputs: Tensor, columns: Tensor, hidden: Hidden, log_q: Tensor | None = None) -> tuple[Tensor, Hidden]:
        """Train on one mini-batch whose targets are columns[:B]; returns (loss, new hidden)."""
        rows, loss, new_hidden, dense_grads, dx, dW_rows, db_rows = self._compute(inputs, columns, hidden, log_q)
        if isinstance(self.ops, native.NativeOps) and self.model.E is None:
            # the item rows' update in one compiled pass (the input gradients folded in)
            self.opt.dense_update(self.dense, dense_grads)
            native.output_rows_update(self.opt, self.model.Wy.weight, self.model.By.weight, rows.rows, dW_rows,
                                      db_rows, rows.is_column.view(torch.uint8), rows.inverse[: len(inputs)], dx)
        else:
            self.opt.apply(self._gradients(inputs, rows, dense_grads, dx, dW_rows, db_rows))
        return loss, new_hidden

    @torch.no_grad()
    def gradients(
        self, inputs: Tensor, columns: Tensor, hidden: Hidden, log_q: Tensor | None = None
    ) -> tuple[Tensor, Hidden, Gradients]:
        """Forward and backward for one mini-batch: (loss, new hidden, gradients by hand), for callers
        that combine gradients before the update (distributed training)."""
        rows, loss, new_hidden, dense_grads, dx, dW_rows, db_rows = self._compute(inputs, columns, hidden, log_q)
        return loss, new_hidden, self._gradients(inputs, rows, dense_grads, dx, dW_rows, db_rows)

    def _compute(self, inputs: Tensor, columns: Tensor, hidden: Hidden, log_q: Tensor | None):
        """Forward and backward: the rows, loss, new hidden, dense gradients, d input embedding, d rows."""
        rows = self._rows(inputs, columns)
        table = rows.W if self.model.E is None else self.model.E.weight
        x = table.index_select(0, rows.inverse[: len(inputs)] if self.model.E is None else inputs)
        layers, new_hidden = self._forward(x, hidden)
        loss, dx, dW_rows, db_rows = self._output(new_hidden[-1], rows, log_q)
        dense_grads, dx = self._backward(dx, layers)
        return rows, loss, new_hidden, dense_grads, dx, dW_rows, db_rows

    def _rows(self, inputs: Tensor, columns: Tensor) -> _Rows:
        """Work on each distinct item row once: the sampled columns repeat popular items many times."""
        shared, b = self.model.E is None, len(inputs)
        ids = torch.cat([inputs, columns]) if shared else columns
        Wy, By = self.model.Wy.weight, self.model.By.weight
        rows, inverse, is_column, W, bias = self.ops.distinct(ids, b if shared else 0, Wy, By.view(-1))
        col_of = inverse[b:] if shared else inverse
        return _Rows(rows, inverse, is_column, col_of, W, bias)

    def _forward(self, x: Tensor, hidden: Hidden) -> tuple[list[_Layer], Hidden]:
        """The GRU layers, keeping what the backward pass needs; draws the masks in the eager step's order."""
        embed_mask = self._mask(x, self.p_embed)
        self.masks = [embed_mask]
        if embed_mask is not None:
            x = x * embed_mask
        layers: list[_Layer] = []
        new_hidden: Hidden = []
        for cell, h in zip(self.model.cells, hidden):
            gi = self.ops.gru_mm.add(cell.bias_ih, x, cell.weight_ih.t())
            gh = self.ops.gru_mm.add(cell.bias_hh, h, cell.weight_hh.t())
            mask = self._mask(h, self.p_hidden)
            self.masks.append(mask)
            rz, n, out = self.ops.gru_forward(gi, gh, h, mask)
            layers.append(_Layer(x, h, rz, n, gh, mask))
            new_hidden.append(out)
            x = out
        return layers, new_hidden

    def _mask(self, like: Tensor, p: float) -> Tensor | None:
        return dropout_mask(like, p)

    def _output(self, x: Tensor, rows: _Rows, log_q: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The output layer and the loss, forward and backward: (loss, dx, dW_rows, db_rows)."""
        scale = 1.0 / self.batch_size
        done = self.ops.output_grad(self.loss, x, rows.W, rows.b, rows.col_of, log_q, scale)
        if done is not None:
            return done
        # the other losses: autograd on the score matrix alone
        O_rows = torch.addmm(rows.b.unsqueeze(0), x, rows.W.t())
        with torch.enable_grad():
            leaf = O_rows.index_select(1, rows.col_of).requires_grad_(True)
            loss = self.loss_fn(leaf, log_q) * scale
            (dO,) = torch.autograd.grad(loss, leaf)
        return (loss.detach(), *output_backward(dO, rows.col_of, x, rows.W))

    def _backward(self, dx: Tensor, layers: list[_Layer]) -> tuple[list[Tensor], Tensor]:
        """Through the GRU layers, last first: the dense gradients and d loss / d (masked) input embedding."""
        dense_grads: list[Tensor] = []
        for cell, layer in zip(reversed(self.model.cells), reversed(layers)):
            dgi, dgh, dbi, dbh = self.ops.gru_backward(dx, layer.mask, layer.h, layer.rz, layer.n, layer.gh)
            mm = self.ops.gru_mm
            dense_grads = [mm(dgi.t(), layer.x), mm(dgh.t(), layer.h), dbi, dbh] + dense_grads
            dx = mm(dgi, cell.weight_ih)
        if self.masks[0] is not None:
            dx = dx * self.masks[0]
        return dense_grads, dx

    def _gradients(
        self, inputs: Tensor, rows: _Rows, dense_grads: list[Tensor], dx: Tensor, dW_rows: Tensor, db_rows: Tensor
    ) -> Gradients:
        """The step's gradients by parameter; rows the reference touches only (an input-only item's bias is not)."""
        model, b = self.model, len(inputs)
        grads = Gradients(dense=list(zip(self.dense, dense_grads)), unique=True)
        Wy, By = model.Wy.weight, model.By.weight
        if model.E is None:
            dW_rows.index_add_(0, rows.inverse[:b], dx)
            grads.sparse.append((Wy, rows.rows, dW_rows))
            keep = rows.is_column.nonzero().squeeze(1)
            grads.sparse.append((By, rows.rows.index_select(0, keep), db_rows.index_select(0, keep).unsqueeze(1)))
        else:
            E_rows, E_inverse = torch.unique(inputs, return_inverse=True)  # B ids: sorting is cheap
            dE = torch.zeros(len(E_rows), dx.shape[1], dtype=dx.dtype, device=dx.device).index_add_(0, E_inverse, dx)
            grads.sparse += [(model.E.weight, E_rows, dE), (Wy, rows.rows, dW_rows), (By, rows.rows, db_rows.unsqueeze(1))]
        return grads
