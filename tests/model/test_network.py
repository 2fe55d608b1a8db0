"""GRU4Rec model: shapes for every embedding mode and layer stack (no hard-coded sizes), the output
score h . W_y[item] + b_y[item], init bounds, and dropout semantics (p is the DROP probability and the
dropped-out output is the carried hidden state)."""

from __future__ import annotations

import math

import pytest
import torch

from gru4rec.training.params import HyperParams
from gru4rec.foundation.errors import UserError
from gru4rec.model.network import GRU4Rec


def make(n_items=13, **kw) -> GRU4Rec:
    torch.manual_seed(0)
    return GRU4Rec(n_items, HyperParams(**kw).model)


MODES = [
    dict(constrained_embedding=True),
    dict(constrained_embedding=False, embedding=6),
    dict(constrained_embedding=False, embedding=0),
]
LAYERS = [(5,), (7, 4), (9, 3, 6)]


@pytest.mark.parametrize("mode", MODES, ids=["shared", "separate", "none"])
@pytest.mark.parametrize("layers", LAYERS, ids=["1", "2", "3"])
@pytest.mark.parametrize("n_items", [2, 17])
def test_shapes_every_mode_and_stack(mode, layers, n_items):
    model = make(n_items, layers=layers, **mode)
    assert model.mode == HyperParams(layers=layers, **mode).embedding_mode
    B = 4
    h = model.init_hidden(B)
    assert [tuple(x.shape) for x in h] == [(B, n) for n in layers]
    assert all(float(x.abs().sum()) == 0.0 for x in h)
    items = torch.tensor([0, n_items - 1, 1, 0])
    for _ in range(2):
        h = model.step(items, h)
        assert [tuple(x.shape) for x in h] == [(B, n) for n in layers]
    assert model.score(h).shape == (B, n_items)
    cols = torch.tensor([1, 0, 1, n_items - 1, 0])
    assert model.score(h, cols).shape == (B, 5)
    assert model.Wy.weight.shape == (n_items, layers[-1])
    assert model.By.weight.shape == (n_items, 1)
    if mode.get("embedding"):
        assert model.E is not None and model.E.weight.shape == (n_items, mode["embedding"])
    elif model.mode == "none":
        assert model.onehot is not None and model.onehot.Wx.weight.shape == (n_items, 3 * layers[0])
    else:
        assert model.E is None and model.onehot is None
    # every layer is sized by the parameters
    sizes = [c.hidden_size for c in model.cells]
    assert sizes == list(layers[1:] if model.mode == "none" else layers)


def test_shared_embedding_is_the_output_matrix():
    model = make(layers=(8,), constrained_embedding=True)
    items = torch.tensor([3, 5])
    h0 = model.init_hidden(2)
    with torch.no_grad():
        model.eval()
        expected = model.cells[0](model.Wy.weight[items], h0[0])
        assert torch.allclose(model.step(items, h0)[0], expected)


def test_score_is_h_times_Wy_plus_By():
    model = make(n_items=11, layers=(6,))
    with torch.no_grad():
        model.By.weight.normal_()  # non-zero biases so they are seen
    h = torch.randn(3, 6)
    full = (h @ model.Wy.weight.T + model.By.weight.T).detach()
    assert torch.allclose(model.score(h), full, atol=1e-6)
    assert torch.allclose(model.score([torch.zeros(3, 2), h]), full, atol=1e-6)  # last layer of a list
    cols = torch.tensor([10, 2, 2, 0])
    sub = (h @ model.Wy.weight[cols].T + model.By.weight[cols].T).detach()
    assert torch.allclose(model.score(h, cols), sub, atol=1e-6)
    assert torch.allclose(model.score(h, cols), full[:, cols], atol=1e-6)


@torch.no_grad()
def test_init_bounds_and_zero_biases():
    n_items, layers, emb = 50, (12, 7), 9
    model = make(n_items, layers=layers, constrained_embedding=False, embedding=emb)

    def within(w, fan_in, fan_out):
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        w = w.detach()
        assert float(w.abs().max()) <= bound + 1e-7
        assert float(w.abs().max()) > 0.5 * bound  # really uniform over the range, not tiny

    within(model.Wy.weight, n_items, layers[-1])
    within(model.E.weight, n_items, emb)
    assert float(model.By.weight.abs().max()) == 0.0
    inputs = [emb, layers[0]]
    for cell, fan_in, size in zip(model.cells, inputs, layers):
        for block in cell.weight_ih.chunk(3, dim=0):
            within(block, fan_in, size)
        for block in cell.weight_hh.chunk(3, dim=0):
            within(block, size, size)
        assert float(cell.bias_ih.abs().max()) == 0.0 and float(cell.bias_hh.abs().max()) == 0.0
    onehot = make(n_items, layers=(10,), constrained_embedding=False, embedding=0).onehot
    within(onehot.Wx.weight, n_items, 10)
    assert float(onehot.bias.abs().max()) == 0.0


def test_needs_two_items():
    with pytest.raises(ValueError):
        GRU4Rec(1, HyperParams().model)


# ---- dropout ----
def zero_fraction(x: torch.Tensor) -> float:
    return float((x == 0).float().mean())


def test_hidden_dropout_p_is_drop_probability():
    n = 4000
    model = make(n_items=30, layers=(50,), dropout_p_hidden=0.8)
    items = torch.randint(0, 30, (n,))
    h0 = model.init_hidden(n)
    model.train()
    torch.manual_seed(1)
    out = model.step(items, h0)[0]
    assert zero_fraction(out) == pytest.approx(0.8, abs=0.02)
    model.eval()
    clean = model.step(items, h0)[0]
    assert zero_fraction(clean) < 0.001
    kept = out != 0
    # inverted dropout: surviving units are scaled by 1 / (1 - p)
    assert torch.allclose(out[kept], clean[kept] / 0.2, rtol=1e-4, atol=1e-6)


def test_dropped_out_output_is_the_carried_state():
    model = make(n_items=30, layers=(40, 40), dropout_p_hidden=0.5)
    model.train()
    items = torch.randint(0, 30, (500,))
    h1 = model.step(items, model.init_hidden(500))
    for layer in h1:  # every layer's carried state has the dropped units zeroed
        assert zero_fraction(layer) == pytest.approx(0.5, abs=0.05)
    # the next step consumes exactly this (dropped-out) state: recompute it by hand in eval mode
    model.eval()
    with torch.no_grad():
        nxt = model.step(items, h1)
        x = model.Wy(items)
        a = model.cells[0](x, h1[0])
        b = model.cells[1](a, h1[1])
    assert torch.allclose(nxt[0], a) and torch.allclose(nxt[1], b)


@pytest.mark.parametrize("mode", MODES[:2], ids=["shared", "separate"])
def test_embedding_dropout_p_is_drop_probability(mode):
    mode = dict(mode, embedding=200) if mode.get("embedding") else mode
    model = make(n_items=20, layers=(200,), dropout_p_embed=0.8, **mode)
    seen = []
    model.cells[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    items = torch.randint(0, 20, (300,))
    table = model.E if model.E is not None else model.Wy
    h0 = model.init_hidden(300)
    model.train()
    model.step(items, h0)
    x = seen[-1]  # what the first GRU layer received
    assert zero_fraction(x) == pytest.approx(0.8, abs=0.02)
    emb = table(items).detach()
    assert torch.allclose(x[x != 0], emb[x != 0] / 0.2, rtol=1e-5)
    model.eval()
    model.step(items, h0)
    assert torch.equal(seen[-1], emb)  # no dropout in eval mode
    assert torch.equal(model.step(items, h0)[0], model.step(items, h0)[0])


def test_onehot_mode_embed_dropout_on_first_layer_output():
    model = make(n_items=20, layers=(60, 10), constrained_embedding=False, embedding=0, dropout_p_embed=0.8)
    model.train()
    h = model.step(torch.randint(0, 20, (400,)), model.init_hidden(400))
    assert zero_fraction(h[0]) == pytest.approx(0.8, abs=0.03)
    assert zero_fraction(h[1]) < 0.01  # dropout_p_hidden = 0


@pytest.mark.parametrize("name", ["dropout_p_embed", "dropout_p_hidden"])
@pytest.mark.parametrize("value", [1.0, 1.5, -0.1])
def test_dropout_outside_0_1_rejected(name, value):
    with pytest.raises(UserError, match=name):
        HyperParams(**{name: value})


def test_gradients_reach_rows_sparsely():
    model = make(n_items=12, layers=(5,))
    h = model.step(torch.tensor([1, 2]), model.init_hidden(2))
    model.score(h, torch.tensor([1, 2, 7])).sum().backward()
    assert model.Wy.weight.grad.is_sparse
    rows = set(model.Wy.weight.grad.coalesce().indices()[0].tolist())
    assert rows == {1, 2, 7}
