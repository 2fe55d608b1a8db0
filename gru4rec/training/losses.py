"""The reference's five losses on the sampled score matrix.

O is B x (B + n_sample): row i holds one mini-batch row's scores for the B in-batch targets followed
by the shared extra negatives, and the target of row i is column i (the other in-batch targets are
its negatives). Each function returns the loss summed over rows; the trainer divides by the batch
size. Accidental hits (a negative equal to the target) are not masked, as in the reference.

The hand-written steps use closed forms of the two recommended losses (`cross_entropy_grad`,
`bpr_max_grad`: the loss and d loss / d O at once, without autograd); these can also leave out
rows and columns (a fixed-shape step's finished slots). The autograd versions above them stay the
reference, and the tests hold the two to the same values and gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-24


def _target_scores(O: Tensor) -> Tensor:
    return torch.diagonal(O).unsqueeze(1)  # [B, 1]


def _softmax_over_negatives(O: Tensor) -> Tensor:
    """Row-wise softmax over the negatives only: the target column gets weight exactly 0."""
    not_target = 1.0 - torch.eye(O.shape[0], O.shape[1], device=O.device, dtype=O.dtype)
    X = O * not_target
    e = torch.exp(X - X.max(dim=1, keepdim=True).values) * not_target
    return e / e.sum(dim=1, keepdim=True)


def cross_entropy(O: Tensor, log_q: Tensor | None = None, logq: float = 0.0) -> Tensor:
    """-sum_i log softmax(O_i)_i, after the optional logQ correction O <- O - logq * log Q."""
    if logq > 0 and log_q is not None:
        O = O - logq * log_q
    X = torch.exp(O - O.max(dim=1, keepdim=True).values)
    X = X / X.sum(dim=1, keepdim=True)
    return -torch.sum(torch.log(torch.diagonal(X) + EPS))


def bpr_max(O: Tensor, elu_param: float = 0.5, bpreg: float = 1.0) -> Tensor:
    """-log(sum_j s_ij sigmoid(o_ii - o_ij)) + bpreg * sum_j s_ij o_ij^2, s = softmax over negatives."""
    if elu_param > 0:
        O = F.elu(O, elu_param)
    s = _softmax_over_negatives(O)
    ranking = torch.sum(torch.sigmoid(_target_scores(O) - O) * s, dim=1)
    return torch.sum(-torch.log(ranking + EPS) + bpreg * torch.sum(O**2 * s, dim=1))


def top1_max(O: Tensor) -> Tensor:
    """sum_j s_ij (sigmoid(o_ij - o_ii) + sigmoid(o_ij^2)), s = softmax over negatives."""
    s = _softmax_over_negatives(O)
    return torch.sum(torch.sum(s * (torch.sigmoid(O - _target_scores(O)) + torch.sigmoid(O**2)), dim=1))


def bpr(O: Tensor) -> Tensor:
    """mean_j -log sigmoid(o_ii - o_ij) over all columns (the reference's mean includes the target)."""
    return torch.sum(torch.mean(-torch.log(torch.sigmoid(_target_scores(O) - O) + EPS), dim=1))


def top1(O: Tensor) -> Tensor:
    """mean_j sigmoid(o_ij - o_ii) + sigmoid(o_ij^2) over all columns, as in the reference."""
    return torch.sum(torch.mean(torch.sigmoid(O - _target_scores(O)) + torch.sigmoid(O**2), dim=1))


LossFn = Callable[[Tensor, Tensor | None], Tensor]


def make_loss(name: str, *, logq: float = 0.0, elu_param: float = 0.5, bpreg: float = 1.0) -> LossFn:
    """A loss taking (O, log_q) by its reference name; log_q is only used by cross-entropy."""
    if name == "cross-entropy":
        return lambda O, log_q: cross_entropy(O, log_q, logq)
    if name == "bpr-max":
        return lambda O, log_q: bpr_max(O, elu_param, bpreg)
    if name == "top1-max":
        return lambda O, log_q: top1_max(O)
    if name == "bpr":
        return lambda O, log_q: bpr(O)
    if name == "top1":
        return lambda O, log_q: top1(O)
    raise ValueError(f"unknown loss {name!r}")


@dataclass(frozen=True)
class OutputLoss:
    """A loss by its reference name with its parameters, as the hand-written steps need it."""

    name: str
    logq: float = 0.0
    elu_param: float = 0.5
    bpreg: float = 1.0

    @property
    def closed_form(self) -> bool:
        return self.name in ("cross-entropy", "bpr-max")

    def grad(
        self, O: Tensor, log_q: Tensor | None, scale: float, rows: Tensor | None = None, cols: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """(scale * loss, scale * d loss / d O) for cross-entropy or BPR-max; see cross_entropy_grad."""
        if self.name == "cross-entropy":
            return cross_entropy_grad(O, log_q if self.logq > 0 else None, self.logq, scale, rows, cols)
        if self.name == "bpr-max":
            return bpr_max_grad(O, self.elu_param, self.bpreg, scale, rows, cols)
        raise ValueError(f"{self.name} has no closed form here: use autograd")


def _masked_rows(row_loss: Tensor, dO: Tensor, rows: Tensor | None, scale: float) -> tuple[Tensor, Tensor]:
    if rows is not None:  # `where`, not a product: a left-out row may hold inf or NaN
        row_loss = torch.where(rows, row_loss, 0.0)
        dO = torch.where(rows.unsqueeze(1), dO, 0.0)
    return row_loss.sum() * scale, dO


def cross_entropy_grad(
    O: Tensor, log_q: Tensor | None, logq: float, scale: float, rows: Tensor | None = None, cols: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """cross_entropy and its gradient: d/dO_ic of -log(s_ii + eps) is (s_ii / (s_ii + eps)) (s_ic - [c == i]).

    rows (B, bool): the rows that count (None: all); cols (C, bool): the columns that exist (None: all),
    so that a left-out column is neither a target nor a negative of any row.
    """
    if logq > 0 and log_q is not None:
        O = O - logq * log_q
    if cols is not None:
        O = O.masked_fill(~cols, float("-inf"))
    s = torch.softmax(O, dim=1)
    target = torch.diagonal(s).clone()
    weight = (target / (target + EPS)) * scale
    if rows is not None:
        weight = torch.where(rows, weight, 0.0)
    dO = s.mul_(weight.unsqueeze(1))
    torch.diagonal(dO).sub_(weight)
    return _masked_rows(-torch.log(target + EPS), dO, rows, scale)


def bpr_max_grad(
    O: Tensor, elu_param: float, bpreg: float, scale: float, rows: Tensor | None = None, cols: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """bpr_max and its gradient (rows and cols as in cross_entropy_grad). With s the softmax over the
    negatives, sg_ij = sigmoid(x_ii - x_ij), rank_i = sum_j s_ij sg_ij, reg_i = sum_j s_ij x_ij^2, w_i = 1/(rank_i + eps):
    d/dx_ij = s_ij (-w_i (sg_ij - rank_i - sg_ij (1 - sg_ij)) + bpreg (x_ij^2 - reg_i + 2 x_ij)) for j != i,
    d/dx_ii = -w_i sum_j s_ij sg_ij (1 - sg_ij), then times ELU's slope.
    """
    X = F.elu(O, elu_param) if elu_param > 0 else O
    negative = ~torch.eye(O.shape[0], O.shape[1], dtype=torch.bool, device=O.device)
    if cols is not None:
        negative &= cols
    top = X.masked_fill(~negative, float("-inf")).amax(dim=1, keepdim=True)  # over the negatives only
    e = torch.exp(X - top).masked_fill_(~negative, 0.0)
    s = e / e.sum(dim=1, keepdim=True)
    sg = torch.sigmoid(_target_scores(X) - X)
    rank = torch.sum(s * sg, dim=1, keepdim=True)
    reg = torch.sum(s * X * X, dim=1, keepdim=True)
    w = 1.0 / (rank + EPS)
    slope = sg * (1.0 - sg)
    dX = s * (-w * (sg - rank - slope) + bpreg * (X * X - reg + 2.0 * X))
    torch.diagonal(dX).copy_(-w.squeeze(1) * torch.sum(s * slope, dim=1))
    if elu_param > 0:
        dX = dX * torch.where(X > 0, 1.0, X + elu_param)
    row_loss = -torch.log(rank.squeeze(1) + EPS) + bpreg * reg.squeeze(1)
    return _masked_rows(row_loss, dX * scale, rows, scale)
