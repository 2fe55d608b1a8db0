"""The reference's five losses on the sampled score matrix.

O is B x (B + n_sample): row i holds one mini-batch row's scores for the B in-batch targets followed
by the shared extra negatives, and the target of row i is column i (the other in-batch targets are
its negatives). Each function returns the loss summed over rows; the trainer divides by the batch
size. Accidental hits (a negative equal to the target) are not masked, as in the reference.
"""

from __future__ import annotations

from collections.abc import Callable

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
