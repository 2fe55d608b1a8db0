"""The five losses against values computed independently (numpy, straight from the formulas of reference
section 2) and hand-worked 2x2 cases; rules out "softmax applied twice" and a wrong BPR-max
(softmax including the target, mean instead of sum, no bpreg)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gru4rec.training.losses import OutputLoss, bpr, bpr_max, cross_entropy, make_loss, top1, top1_max

EPS = 1e-24


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_softmax(v):
    e = np.exp(v - v.max())
    return e / e.sum()


def np_elu(x, alpha):
    return np.where(x > 0, x, alpha * (np.exp(x) - 1.0))


def np_xe(O, logQ=None, logq=0.0):
    O = np.array(O, dtype=np.float64)
    if logq > 0:
        O = O - logq * logQ[None, :]
    return sum(-math.log(np_softmax(O[i])[i] + EPS) for i in range(O.shape[0]))


def np_bpr_max(O, elu_param, bpreg):
    O = np.array(O, dtype=np.float64)
    if elu_param > 0:
        O = np_elu(O, elu_param)
    total = 0.0
    for i in range(O.shape[0]):
        neg = np.delete(O[i], i)  # the target is NOT part of the softmax
        s = np_softmax(neg)
        total += -math.log(np.sum(s * sigmoid(O[i, i] - neg)) + EPS) + bpreg * np.sum(s * neg**2)
    return total  # a sum over rows, not a mean


def np_top1_max(O):
    O = np.array(O, dtype=np.float64)
    total = 0.0
    for i in range(O.shape[0]):
        neg = np.delete(O[i], i)
        s = np_softmax(neg)
        total += np.sum(s * (sigmoid(neg - O[i, i]) + sigmoid(neg**2)))
    return total


def np_bpr(O):
    O = np.array(O, dtype=np.float64)
    return sum(np.mean(-np.log(sigmoid(O[i, i] - O[i]) + EPS)) for i in range(O.shape[0]))


def np_top1(O):
    O = np.array(O, dtype=np.float64)
    return sum(np.mean(sigmoid(O[i] - O[i, i]) + sigmoid(O[i] ** 2)) for i in range(O.shape[0]))


def t(a):
    return torch.tensor(np.asarray(a), dtype=torch.float64)


def random_O(seed, B=4, n_sample=6, scale=2.0):
    return np.random.default_rng(seed).normal(0, scale, size=(B, B + n_sample))


# ---- hand-worked 2 x 2 cases (one negative per row, so the softmax over negatives is 1) ----
O2 = [[2.0, 0.0], [1.0, 1.0]]


def test_cross_entropy_by_hand():
    # row 0: -log(e^2 / (e^2 + e^0)) = log(1 + e^-2); row 1: -log(1/2) = log 2
    expected = math.log(1 + math.exp(-2)) + math.log(2)
    assert cross_entropy(t(O2)).item() == pytest.approx(expected, rel=1e-12)


def test_cross_entropy_logq_by_hand():
    # logQ subtracts logq * log Q[column] from every row: Q = (e^1, e^0) -> O' = [[1, 0], [0, 1]]
    log_q = t([1.0, 0.0])
    expected = 2 * math.log(1 + math.exp(-1))
    assert cross_entropy(t(O2), log_q, 1.0).item() == pytest.approx(expected, rel=1e-12)
    # logq = 0 disables the correction
    assert cross_entropy(t(O2), log_q, 0.0).item() == pytest.approx(np_xe(O2), rel=1e-12)


def test_bpr_max_by_hand_without_elu():
    # s = 1 on the single negative. row 0: -log sig(2 - 0) + bpreg * 0^2; row 1: -log sig(0) + bpreg * 1^2
    bpreg = 1.5
    expected = -math.log(1 / (1 + math.exp(-2))) + math.log(2) + bpreg * 1.0
    assert bpr_max(t(O2), elu_param=0.0, bpreg=bpreg).item() == pytest.approx(expected, rel=1e-12)


def test_bpr_max_by_hand_with_elu():
    # ELU(0.5) only changes negative scores: O = [[1, -1]] -> [[1, 0.5 (e^-1 - 1)]], row 1 [[-1, 3]] -> [[.., 3]]
    O = [[1.0, -1.0], [-1.0, 3.0]]
    a = 0.5
    n0 = a * (math.exp(-1) - 1)  # the negative of row 0 after ELU
    r0 = -math.log(1 / (1 + math.exp(-(1 - n0)))) + 2.0 * n0**2
    r1 = -math.log(1 / (1 + math.exp(-(3 - n0)))) + 2.0 * n0**2  # row 1: target 3, negative ELU(-1) = n0
    assert bpr_max(t(O), elu_param=a, bpreg=2.0).item() == pytest.approx(r0 + r1, rel=1e-12)


def test_bpr_top1_by_hand():
    # BPR row mean includes the target column (-log sig(0) = log 2), as the reference does
    expected_bpr = 0.5 * (-math.log(1 / (1 + math.exp(-2))) + math.log(2)) + 0.5 * (math.log(2) + math.log(2))
    assert bpr(t(O2)).item() == pytest.approx(expected_bpr, rel=1e-12)
    s = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected_top1 = 0.5 * (s(0) + s(4) + s(-2) + s(0)) + 0.5 * (s(0) + s(1) + s(0) + s(1))
    assert top1(t(O2)).item() == pytest.approx(expected_top1, rel=1e-12)
    # TOP1-max with one negative: s = 1 -> sig(o_ij - o_ii) + sig(o_ij^2)
    expected_top1max = (s(-2) + s(0)) + (s(0) + s(1))
    assert top1_max(t(O2)).item() == pytest.approx(expected_top1max, rel=1e-12)


# ---- random matrices against the independent numpy versions ----
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_all_losses_match_numpy(seed):
    O = random_O(seed)
    assert cross_entropy(t(O)).item() == pytest.approx(np_xe(O), rel=1e-10)
    logQ = np.log(np.random.default_rng(seed + 10).integers(1, 100, size=O.shape[1]).astype(np.float64))
    assert cross_entropy(t(O), t(logQ), 0.7).item() == pytest.approx(np_xe(O, logQ, 0.7), rel=1e-10)
    for elu_param, bpreg in [(0.5, 1.95), (0.0, 1.0), (1.0, 0.0)]:
        assert bpr_max(t(O), elu_param, bpreg).item() == pytest.approx(np_bpr_max(O, elu_param, bpreg), rel=1e-10)
    assert top1_max(t(O)).item() == pytest.approx(np_top1_max(O), rel=1e-10)
    assert bpr(t(O)).item() == pytest.approx(np_bpr(O), rel=1e-10)
    assert top1(t(O)).item() == pytest.approx(np_top1(O), rel=1e-10)


def test_losses_in_float32_match():
    O = random_O(5, B=8, n_sample=32)
    O32 = torch.tensor(O, dtype=torch.float32)
    assert cross_entropy(O32).item() == pytest.approx(np_xe(O), rel=1e-5)
    assert bpr_max(O32, 0.5, 1.0).item() == pytest.approx(np_bpr_max(O, 0.5, 1.0), rel=1e-5)


def test_softmax_applied_once():
    O = random_O(3)
    once = sum(-math.log(np_softmax(O[i])[i]) for i in range(O.shape[0]))
    twice = sum(-math.log(np_softmax(np_softmax(O[i]))[i]) for i in range(O.shape[0]))
    got = cross_entropy(t(O)).item()
    assert got == pytest.approx(once, rel=1e-10)
    assert abs(got - twice) > 0.1


def test_bpr_max_excludes_target_from_softmax_sums_and_regularises():
    O = random_O(4)
    base = bpr_max(t(O), 0.0, 1.0).item()
    # softmax including the target would differ
    wrong_incl_target = 0.0
    for i in range(O.shape[0]):
        s = np_softmax(O[i])
        wrong_incl_target += -math.log(np.sum(s * sigmoid(O[i, i] - O[i]))) + np.sum(s * O[i] ** 2)
    assert abs(base - wrong_incl_target) > 1e-3
    # summed over rows, not averaged
    summed = np_bpr_max(O, 0.0, 1.0)
    assert base == pytest.approx(summed, rel=1e-10)
    assert abs(base - summed / O.shape[0]) > 1e-3
    # the bpreg term is present and linear in bpreg: loss(b) - loss(0) = b * sum_i sum_j s_ij o_ij^2
    reg = 0.0
    for i in range(O.shape[0]):
        neg = np.delete(O[i], i)
        reg += np.sum(np_softmax(neg) * neg**2)
    assert bpr_max(t(O), 0.0, 1.95).item() - bpr_max(t(O), 0.0, 0.0).item() == pytest.approx(1.95 * reg, rel=1e-9)
    # changing only the target score never changes the negatives' weights: the regulariser is unchanged
    O_up = O.copy()
    np.fill_diagonal(O_up, O.diagonal() + 5.0)
    reg_part = lambda M: bpr_max(t(M), 0.0, 1.0).item() - bpr_max(t(M), 0.0, 0.0).item()  # noqa: E731
    assert reg_part(O_up) == pytest.approx(reg_part(O), rel=1e-9)


def test_target_is_column_i_and_rows_are_summed():
    # each loss is a sum of per-row terms: a B x C matrix gives the sum of its rows' values
    O = random_O(6, B=3, n_sample=4)
    for fn in (lambda M: cross_entropy(M), lambda M: bpr_max(M, 0.5, 1.0), top1_max, bpr, top1):
        total = fn(t(O)).item()
        per_row = 0.0
        for i in range(O.shape[0]):
            # move row i's target to column 0 of a 1-row matrix: the row's own loss
            row = np.r_[O[i, i], np.delete(O[i], i)][None, :]
            per_row += fn(t(row)).item()
        assert total == pytest.approx(per_row, rel=1e-9)


def test_no_nan_on_extreme_scores():
    O = np.array([[80.0, -80.0, 60.0], [-50.0, 90.0, 0.0]])
    for fn in (lambda M: cross_entropy(M), lambda M: bpr_max(M, 0.5, 1.0), top1_max, bpr, top1):
        value = fn(torch.tensor(O, dtype=torch.float32))
        assert torch.isfinite(value)


def test_make_loss_dispatch():
    O = random_O(7)
    logQ = np.log(np.arange(1, O.shape[1] + 1, dtype=np.float64))
    assert make_loss("cross-entropy", logq=1.0)(t(O), t(logQ)).item() == pytest.approx(np_xe(O, logQ, 1.0), rel=1e-10)
    assert make_loss("cross-entropy", logq=0.0)(t(O), t(logQ)).item() == pytest.approx(np_xe(O), rel=1e-10)
    assert make_loss("bpr-max", elu_param=0.5, bpreg=1.95)(t(O), None).item() == pytest.approx(np_bpr_max(O, 0.5, 1.95), rel=1e-10)
    assert make_loss("top1-max")(t(O), None).item() == pytest.approx(np_top1_max(O), rel=1e-10)
    assert make_loss("bpr")(t(O), None).item() == pytest.approx(np_bpr(O), rel=1e-10)
    assert make_loss("top1")(t(O), None).item() == pytest.approx(np_top1(O), rel=1e-10)
    with pytest.raises(ValueError):
        make_loss("hinge")


def test_gradients_flow_only_where_expected():
    # BPR-max: the gradient w.r.t. every target score is negative (raise it) and finite
    O = t(random_O(8)).requires_grad_(True)
    bpr_max(O, 0.5, 1.0).backward()
    assert torch.isfinite(O.grad).all()
    assert (torch.diagonal(O.grad) < 0).all()


# ---- the closed forms the hand-written steps use: same value and gradient as autograd ----
CLOSED = [
    OutputLoss("cross-entropy", logq=0.8),
    OutputLoss("cross-entropy", logq=0.0),
    OutputLoss("bpr-max", elu_param=0.5, bpreg=1.95),
    OutputLoss("bpr-max", elu_param=0.0, bpreg=0.7),
]


def autograd_reference(loss: OutputLoss, O: torch.Tensor, log_q: torch.Tensor, scale: float):
    leaf = O.clone().requires_grad_(True)
    value = make_loss(loss.name, logq=loss.logq, elu_param=loss.elu_param, bpreg=loss.bpreg)(leaf, log_q) * scale
    value.backward()
    return value.detach(), leaf.grad


@pytest.mark.parametrize("loss", CLOSED, ids=["xe-logq", "xe", "bprmax-elu", "bprmax"])
@pytest.mark.parametrize("B,C", [(1, 2), (4, 9), (32, 300)])
def test_closed_forms_match_autograd(loss, B, C):
    gen = torch.Generator().manual_seed(B * C)
    O, log_q = torch.randn(B, C, generator=gen, dtype=torch.float64) * 2, torch.randn(C, generator=gen, dtype=torch.float64)
    want_value, want_grad = autograd_reference(loss, O, log_q, 0.25)
    value, grad = loss.grad(O, log_q, 0.25)
    assert value.item() == pytest.approx(want_value.item(), rel=1e-10)
    assert torch.allclose(grad, want_grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("loss", CLOSED, ids=["xe-logq", "xe", "bprmax-elu", "bprmax"])
def test_closed_forms_leave_out_rows_and_columns_exactly(loss):
    """A fixed-shape step's finished slots: leaving row/column k out equals deleting them from O."""
    gen = torch.Generator().manual_seed(5)
    B, S = 6, 4
    O, log_q = torch.randn(B, B + S, generator=gen, dtype=torch.float64), torch.randn(B + S, generator=gen, dtype=torch.float64)
    O[1, :], O[:, 4] = float("nan"), 1e6  # what a finished slot holds must not leak into the others
    rows = torch.tensor([True, False, True, True, False, True])
    cols = torch.cat([rows, torch.ones(S, dtype=torch.bool)])
    value, grad = loss.grad(O, log_q, 0.5, rows=rows, cols=cols)
    keep = rows.nonzero().squeeze(1)
    keep_cols = cols.nonzero().squeeze(1)
    want_value, want_grad = autograd_reference(loss, O[keep][:, keep_cols], log_q[keep_cols], 0.5)
    assert value.item() == pytest.approx(want_value.item(), rel=1e-10)
    assert torch.allclose(grad[keep][:, keep_cols], want_grad, rtol=1e-9, atol=1e-12)
    assert torch.count_nonzero(grad[~rows]) == 0 and torch.count_nonzero(grad[:, ~cols]) == 0


def test_bpr_max_closed_form_survives_a_target_far_above_its_negatives():
    """The softmax over negatives is stabilised by their own max, not one that includes the target."""
    O = torch.tensor([[200.0, -1.0, -1.5], [-1.0, 200.0, -2.0]], dtype=torch.float64)
    value, grad = OutputLoss("bpr-max", elu_param=0.0, bpreg=1.0).grad(O, None, 1.0)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    # sigmoid(200 - o) = 1, so each row's loss is bpreg * sum_j s_j o_j^2 over its own negatives
    reg = [float((torch.softmax(torch.tensor(neg, dtype=torch.float64), 0) * torch.tensor(neg) ** 2).sum())
           for neg in ([-1.0, -1.5], [-1.0, -2.0])]
    assert value.item() == pytest.approx(sum(reg), rel=1e-9)
