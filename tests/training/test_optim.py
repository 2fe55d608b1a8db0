"""AdagradMomentum against a straightforward reference written here:

    acc += g^2;  step = -lr * g / sqrt(acc + eps);  mom = momentum * mom + step;  w += mom

Sparse (item-row) gradients: duplicate ids of a step are summed first, only touched rows change."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gru4rec.training.params import HyperParams
from gru4rec.model.network import GRU4Rec
from gru4rec.training.optim import AdagradMomentum, make_optimizer


class Reference:
    """Dense numpy reference applied to the rows a step touches (float64)."""

    def __init__(self, w: np.ndarray, lr: float, momentum: float, eps: float = 1e-6) -> None:
        self.w = w.astype(np.float64).copy()
        self.acc = np.zeros_like(self.w)
        self.mom = np.zeros_like(self.w)
        self.lr, self.momentum, self.eps = lr, momentum, eps

    def sparse_step(self, rows: list[int], row_grads: np.ndarray) -> None:
        g = {}
        for r, v in zip(rows, row_grads):
            g[r] = g.get(r, 0.0) + v  # duplicates summed FIRST
        for r, gr in g.items():
            self.acc[r] += gr * gr
            step = -self.lr * gr / np.sqrt(self.acc[r] + self.eps)
            self.mom[r] = self.momentum * self.mom[r] + step if self.momentum > 0 else step
            self.w[r] += self.mom[r]

    def dense_step(self, g: np.ndarray) -> None:
        self.acc += g * g
        step = -self.lr * g / np.sqrt(self.acc + self.eps)
        self.mom = self.momentum * self.mom + step if self.momentum > 0 else step
        self.w += self.mom


@pytest.mark.parametrize("momentum", [0.0, 0.4])
def test_sparse_update_equals_reference_with_duplicates(momentum):
    torch.manual_seed(0)
    n, d = 12, 3
    emb = torch.nn.Embedding(n, d, sparse=True)
    ref = Reference(emb.weight.detach().numpy(), lr=0.1, momentum=momentum)
    opt = AdagradMomentum(emb.parameters(), lr=0.1, momentum=momentum)
    steps = [[1, 3, 1, 7, 3, 1], [2, 1, 1], [7, 7, 7, 7], [0, 11, 3]]
    touched = set()
    for k, rows in enumerate(steps):
        coeff = torch.randn(len(rows), d, generator=torch.Generator().manual_seed(k))
        opt.zero_grad(set_to_none=True)
        (emb(torch.tensor(rows)) * coeff).sum().backward()
        assert emb.weight.grad.is_sparse
        before = emb.weight.detach().clone()
        opt.step()
        ref.sparse_step(rows, coeff.numpy().astype(np.float64))
        touched |= set(rows)
        np.testing.assert_allclose(emb.weight.detach().numpy(), ref.w, rtol=1e-5, atol=1e-6)
        # rows not touched in this step are bit-for-bit unchanged (no momentum drift on them either)
        untouched = sorted(set(range(n)) - set(rows))
        assert torch.equal(emb.weight.detach()[untouched], before[untouched])
    never = sorted(set(range(n)) - touched)
    assert never  # some rows were never touched: still at their initial value, zero accumulator
    state = opt.state[emb.weight]
    assert float(state["acc"][never].abs().sum()) == 0.0


def test_sparse_duplicates_summed_before_accumulating():
    # one row hit twice with g each: acc = (2g)^2, not 2 g^2
    w = torch.nn.Embedding(2, 1, sparse=True)
    with torch.no_grad():
        w.weight.zero_()
    opt = AdagradMomentum(w.parameters(), lr=1.0, momentum=0.0)
    w(torch.tensor([0, 0])).sum().backward()  # g = 1 + 1
    opt.step()
    assert opt.state[w.weight]["acc"][0, 0].item() == pytest.approx(4.0)
    assert w.weight[0, 0].item() == pytest.approx(-2.0 / np.sqrt(4.0 + 1e-6))
    assert w.weight[1, 0].item() == 0.0


def test_hand_built_uncoalesced_sparse_grad():
    p = torch.nn.Parameter(torch.zeros(5, 2))
    opt = AdagradMomentum([p], lr=0.5, momentum=0.3)
    ref = Reference(np.zeros((5, 2)), lr=0.5, momentum=0.3)
    for rows, vals in [([4, 0, 4], [[1.0, -2.0], [0.5, 0.5], [3.0, 1.0]]), ([0, 0], [[1.0, 1.0], [-3.0, 2.0]])]:
        p.grad = torch.sparse_coo_tensor(torch.tensor([rows]), torch.tensor(vals), (5, 2), check_invariants=True)
        opt.step()
        ref.sparse_step(rows, np.array(vals))
        np.testing.assert_allclose(p.detach().numpy(), ref.w, rtol=1e-6, atol=1e-7)
    assert float(p.detach()[1:4].abs().sum()) == 0.0


@pytest.mark.parametrize("momentum", [0.0, 0.2])
def test_dense_update_equals_reference(momentum):
    torch.manual_seed(1)
    p = torch.nn.Parameter(torch.randn(4, 3))
    ref = Reference(p.detach().numpy(), lr=0.05, momentum=momentum)
    opt = AdagradMomentum([p], lr=0.05, momentum=momentum)
    for k in range(4):
        g = torch.randn(4, 3, generator=torch.Generator().manual_seed(k))
        if k == 2:
            g[1] = 0.0  # a zero gradient still lets momentum move a dense weight, as in the reference
        p.grad = g.clone()
        opt.step()
        ref.dense_step(g.numpy().astype(np.float64))
        np.testing.assert_allclose(p.detach().numpy(), ref.w, rtol=1e-5, atol=1e-7)


def test_invalid_lr():
    with pytest.raises(ValueError):
        AdagradMomentum([torch.nn.Parameter(torch.zeros(1))], lr=0.0)


def test_make_optimizer_covers_all_parameters():
    model = GRU4Rec(9, HyperParams(layers=(4,), constrained_embedding=False, embedding=3).model)
    (opt,) = make_optimizer(model, "adagrad", 0.1, 0.2)
    assert isinstance(opt, AdagradMomentum)
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert ids == {id(p) for p in model.parameters()}
    adam = make_optimizer(model, "adam", 0.01, 0.0)
    ids = [id(p) for o in adam for g in o.param_groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    assert isinstance(adam[0], torch.optim.SparseAdam)


def test_optimizer_state_dict_roundtrip_loads_weights_only(tmp_path):
    emb = torch.nn.Embedding(6, 2, sparse=True)
    opt = AdagradMomentum(emb.parameters(), lr=0.1, momentum=0.5)
    emb(torch.tensor([1, 2, 1])).sum().backward()
    opt.step()
    torch.save(opt.state_dict(), tmp_path / "o.pt")
    loaded = torch.load(tmp_path / "o.pt", weights_only=True)
    opt2 = AdagradMomentum(emb.parameters(), lr=0.1, momentum=0.5)
    opt2.load_state_dict(loaded)
    assert torch.equal(opt2.state[emb.weight]["acc"], opt.state[emb.weight]["acc"])
    assert torch.equal(opt2.state[emb.weight]["mom"], opt.state[emb.weight]["mom"])


def test_state_dict_round_trip_in_torch_format(tmp_path):
    """The state travels as torch.optim.Optimizer's format (positions, one group); a fresh optimiser
    that loads it continues exactly as the one that wrote it, and the optimizer.pt of the previous
    release (a torch.optim.Optimizer subclass) loads."""
    model = GRU4Rec(9, HyperParams(layers=(4,), constrained_embedding=False, embedding=3).model)
    (opt,) = make_optimizer(model, "adagrad", 0.1, 0.2)
    for p in model.parameters():
        opt.state_for(p)["acc"].fill_(float(p.numel()))
    state = opt.state_dict()
    assert state["param_groups"] == [{"lr": 0.1, "momentum": 0.2, "eps": 1e-6, "params": list(range(len(opt.params)))}]
    torch.save(state, tmp_path / "optimizer.pt")
    (fresh,) = make_optimizer(model, "adagrad", 0.1, 0.2)
    fresh.load_state_dict(torch.load(tmp_path / "optimizer.pt", weights_only=True))
    for p in model.parameters():
        assert torch.equal(fresh.state[p]["acc"], opt.state[p]["acc"]) and torch.equal(fresh.state[p]["mom"], opt.state[p]["mom"])
    (other,) = make_optimizer(GRU4Rec(9, HyperParams(layers=(4, 4)).model), "adagrad", 0.1, 0.2)
    with pytest.raises(ValueError, match="does not match"):
        other.load_state_dict(state)


def test_old_release_optimizer_state_loads():
    from gru4rec.model.checkpoint import load_checkpoint, load_optimizer_state

    fixture = Path(__file__).parents[1] / "fixtures" / "model_v1"
    model = load_checkpoint(fixture).model
    (opt,) = make_optimizer(model, "adagrad", 0.1, 0.2)
    opt.load_state_dict(load_optimizer_state(fixture, "cpu")[0])
    assert opt.state and all(s["acc"].shape == p.shape for p, s in opt.state.items())


def test_training_does_not_import_torch_dynamo(tmp_path):
    """torch.optim.Optimizer's methods import torch._dynamo (seconds at start-up); the default training
    path must not touch them."""
    script = (
        "import sys, numpy as np, torch\n"
        "from gru4rec.data.sessions import Sessions\n"
        "from gru4rec.training.params import HyperParams\n"
        "from gru4rec.training.trainer import Trainer\n"
        "items = np.arange(400) % 37; offsets = np.arange(0, 401, 8)\n"
        "s = Sessions(items, offsets, np.array([str(i) for i in range(50)]))\n"
        "t = Trainer(HyperParams(layers=(8,), batch_size=4, n_sample=8), s, np.bincount(items), torch.device('cpu'), seed=1)\n"
        "t.train_epoch(0); t.optimizer_state()\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"
