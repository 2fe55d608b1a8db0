"""The compiled CPU kernels (gru4rec/native) against the portable PyTorch code they replace, the
build cache, and the fallback when they cannot be built."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from gru4rec.training import native
from gru4rec.training.params import HyperParams
from gru4rec.training.fused import FusedStep, TorchOps
from gru4rec.training.losses import OutputLoss
from gru4rec.training.optim import AdagradMomentum, Gradients
from gru4rec.training.trainer import Trainer
from session_factories import cyclic

CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ops() -> native.NativeOps:
    assert native.library() is not None, "the native kernels must build here (a C compiler is part of the set-up)"
    return native.NativeOps(500)


TORCH = TorchOps(500, CPU)
SHAPES = [(32, 100, 1450, 2080), (5, 37, 50, 61), (1, 8, 3, 4), (80, 224, 300, 2128)]  # B, H, R, C


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 2e-5) -> bool:
    return torch.allclose(a, b, rtol=tol, atol=tol * max(1.0, float(b.abs().max())))


def test_distinct_rows(ops):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 500, (700,), generator=gen)
    W, b = torch.randn(500, 7, generator=gen), torch.randn(500, generator=gen)
    for impl in (ops, TORCH):
        rows, inverse, late, W_rows, b_rows = impl.distinct(ids, 40, W, b)
        assert torch.equal(rows[inverse], ids)  # every id maps to its row
        assert len(set(rows.tolist())) == len(rows) == len(set(ids.tolist()))
        assert set(rows[late].tolist()) == set(ids[40:].tolist())  # rows that occur among the late ids
        assert torch.equal(W_rows, W[rows]) and torch.equal(b_rows, b[rows])  # the rows' copies
        assert impl.distinct(ids, 40)[3:] == (None, None)
    rows, _, _, _, _ = ops.distinct(ids, 40)
    first = [int(i) for i in dict.fromkeys(ids.tolist())]
    assert rows.tolist() == first  # native: order of first appearance
    assert torch.equal(ops.slot, torch.full((500,), -1))  # the slot table is left clean for the next step


LOSSES = [
    OutputLoss("cross-entropy", logq=0.7),
    OutputLoss("cross-entropy", logq=0.0),
    OutputLoss("bpr-max", elu_param=0.5, bpreg=1.95),
    OutputLoss("bpr-max", elu_param=0.0, bpreg=1.0),
]


@pytest.mark.parametrize("product", ["torch", "blocked"])
@pytest.mark.parametrize("B,H,R,C", SHAPES)
@pytest.mark.parametrize("loss", LOSSES, ids=["xe-logq", "xe", "bprmax-elu", "bprmax"])
def test_output_layer_losses(B, H, R, C, loss, product):
    ops = native.NativeOps(500)
    # blocked: what the step uses where the kernels' blocked product is the faster one
    ops.output_mm.fn = native.matmul if product == "blocked" else torch.mm
    gen = torch.Generator().manual_seed(B + H)
    x = torch.randn(B, H, generator=gen)
    W_rows, b_rows = torch.randn(R, H, generator=gen) * 0.3, torch.randn(R, generator=gen)
    col_of = torch.randint(0, R, (C,), generator=gen)  # repeated rows, as sampled columns repeat items
    log_q = torch.randn(C, generator=gen)
    got = ops.output_grad(loss, x, W_rows, b_rows, col_of, log_q, 1 / B)
    want = TORCH.output_grad(loss, x, W_rows, b_rows, col_of, log_q, 1 / B)
    for name, g, w in zip(("loss", "dx", "dW_rows", "db_rows"), got, want):
        assert close(g, w, 5e-5), name


@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (7, 5, 33), (8, 100, 32), (80, 224, 2128), (2080, 32, 100), (33, 61, 65)])
def test_blocked_product_matches_torch_on_views(M, K, N):
    gen = torch.Generator().manual_seed(M * K + N)
    A, B = torch.randn(M, K, generator=gen), torch.randn(K, N, generator=gen)
    At, Bt = torch.randn(K, M, generator=gen), torch.randn(N, K, generator=gen)
    wide = torch.randn(M, K + 9, generator=gen)
    for a, b in [(A, B), (At.t(), B), (A, Bt.t()), (At.t(), Bt.t()), (wide[:, 4 : 4 + K], B)]:  # views read in place
        assert close(native.matmul(a, b), torch.mm(a, b), 1e-5)
    with pytest.raises(ValueError, match="float32"):
        native.matmul(A.double(), B.double())
    with pytest.raises(ValueError):
        native.matmul(A, torch.randn(K + 1, N))


def test_a_timed_product_choice_is_remembered_so_runs_repeat_bit_for_bit(tmp_path, monkeypatch):
    """The first timing on a machine decides, for every later run and process (a resumed run takes the
    same products as the one it continues, however busy the machine is when it starts)."""
    monkeypatch.delenv("GRU4REC_NATIVE_MM", raising=False)
    path = tmp_path / "products.json"
    monkeypatch.setattr(native, "_product_choices", lambda: choices)
    choices = native.ProductChoices(path)
    A, B = torch.randn(6, 8), torch.randn(8, 5)
    first = native._choose_mm(A, B, "test")
    (key, saved), = json.loads(path.read_text()).items()
    assert "test: (6, 8) (8, 1) @ (8, 5) (5, 1)" in key and saved == ("blocked" if first is native.matmul else "pytorch")
    other = "pytorch" if saved == "blocked" else "blocked"
    path.write_text(json.dumps({key: other}))  # as if another process had timed it the other way first
    choices = native.ProductChoices(path)

    def no_timing():
        raise AssertionError("a remembered choice is not timed again")

    monkeypatch.setattr(native.time, "perf_counter", no_timing)
    assert native._choose_mm(A, B, "test") is (native.matmul if other == "blocked" else torch.mm)
    path.write_text("{}")
    late = native.ProductChoices(path)  # read before another process remembered its choice...
    path.write_text(json.dumps({key: saved}))
    late.put(key, other)  # ...which is kept: the first one wins
    assert json.loads(path.read_text()) == {key: saved}
    path.write_text("{not json")
    assert native.ProductChoices(path).get(key) is None  # unreadable: timed again


@pytest.mark.parametrize("setting, expected", [("1", "matmul"), ("0", "mm"), ("auto", None)])
def test_the_output_product_is_chosen_once_or_forced(monkeypatch, setting, expected):
    monkeypatch.setenv("GRU4REC_NATIVE_MM", setting)
    ops = native.NativeOps(50)
    x, W = torch.randn(4, 8), torch.randn(12, 8)
    ops.output_grad(LOSSES[0], x, W, torch.zeros(12), torch.arange(12), torch.zeros(12), 0.25)
    chosen = ops.output_mm.fn
    assert chosen in (native.matmul, torch.mm)  # chosen at the first product, kept afterwards
    ops.output_grad(LOSSES[0], x, W, torch.zeros(12), torch.arange(12), torch.zeros(12), 0.25)
    assert ops.output_mm.fn is chosen and ops.gru_mm.fn is None  # each part chooses on its own shapes
    if expected is not None:
        assert chosen.__name__ == expected
    assert torch.allclose(ops.output_mm.add(torch.ones(3), x[:, :2], W[:3, :2].t()), torch.addmm(torch.ones(3), x[:, :2], W[:3, :2].t()), atol=1e-6)


def test_losses_without_a_kernel_are_left_to_autograd(ops):
    x, W = torch.randn(2, 4), torch.randn(3, 4)
    assert ops.output_grad(OutputLoss("top1-max"), x, W, torch.zeros(3), torch.tensor([0, 1, 2]), None, 0.5) is None


@pytest.mark.parametrize("loss", LOSSES[1:3], ids=["xe", "bprmax"])
def test_output_layer_extreme_scores_stay_exact_or_propagate(ops, loss):
    x, W = torch.full((2, 4), 30.0), torch.full((3, 4), 30.0)  # scores ~3,600: exp must not overflow after the shift
    W[2] *= -1  # and a negative one far below: BPR-max's sigmoid sees differences of 7,200
    col_of = torch.tensor([0, 1, 2, 2])
    got = ops.output_grad(loss, x, W, torch.zeros(3), col_of, None, 0.5)
    want = TORCH.output_grad(loss, x, W, torch.zeros(3), col_of, None, 0.5)
    assert all(close(g, w) for g, w in zip(got, want))
    W[1, 0] = float("inf")  # a diverged weight must show as a non-finite loss, never be clamped away
    value = ops.output_grad(loss, x, W, torch.zeros(3), col_of, None, 0.5)[0]
    assert not torch.isfinite(value)


@pytest.mark.parametrize("B,H", [(32, 100), (3, 7), (80, 224)])
@pytest.mark.parametrize("with_mask", [True, False])
def test_gru_gates_forward_and_backward(ops, B, H, with_mask):
    gen = torch.Generator().manual_seed(H)
    gi, gh = torch.randn(B, 3 * H, generator=gen) * 3, torch.randn(B, 3 * H, generator=gen) * 3
    h = torch.randn(B, H, generator=gen)
    mask = (torch.rand(B, H, generator=gen) < 0.6).float() / 0.6 if with_mask else None
    fwd = ops.gru_forward(gi, gh, h, mask)
    for g, w in zip(fwd, TORCH.gru_forward(gi, gh, h, mask)):
        assert close(g, w, 1e-6)
    rz, n, _ = fwd
    dx = torch.randn(B, H, generator=gen)
    for g, w in zip(ops.gru_backward(dx, mask, h, rz, n, gh), TORCH.gru_backward(dx, mask, h, rz, n, gh)):
        assert close(g, w, 1e-5)


@pytest.mark.parametrize("momentum", [0.0, 0.4])
def test_adagrad_rows_matches_the_formula(momentum):
    gen = torch.Generator().manual_seed(3)
    p, acc = torch.randn(20, 6, generator=gen), torch.rand(20, 6, generator=gen)
    mom = torch.randn(20, 6, generator=gen) if momentum else None
    rows, grad = torch.tensor([3, 0, 17, 9]), torch.randn(4, 6, generator=gen)
    want_acc = acc.clone()
    want_acc[rows] += grad**2
    step = grad / torch.sqrt(want_acc[rows] + 1e-6) * -0.1
    want_p, want_mom = p.clone(), None
    if mom is not None:
        want_mom = mom.clone()
        want_mom[rows] = momentum * mom[rows] + step
        step = want_mom[rows]
    want_p[rows] += step
    native.adagrad_rows(p, acc, mom, rows, grad, 0.1, momentum, 1e-6)
    assert close(acc, want_acc, 1e-6) and close(p, want_p, 1e-6)
    if mom is not None:
        assert close(mom, want_mom, 1e-6)
    untouched = [i for i in range(20) if i not in rows.tolist()]
    assert torch.equal(p[untouched], want_p[untouched])
    # a whole tensor at once (the dense GRU weights)
    q, acc2, g = torch.randn(5, 3), torch.zeros(5, 3), torch.randn(5, 3)
    expected = q + g / torch.sqrt(g * g + 1e-6) * -0.1
    native.adagrad_rows(q, acc2, None, None, g, 0.1, 0.0, 1e-6)
    assert close(q, expected, 1e-6)


def test_kernels_refuse_tensors_they_would_misread(ops):
    with pytest.raises(ValueError, match="contiguous"):
        ops.gru_forward(torch.randn(4, 9).t().contiguous().t(), torch.randn(3, 12), torch.randn(3, 4), None)
    with pytest.raises(ValueError, match="float32"):
        ops.output_grad(LOSSES[1], torch.randn(2, 2), torch.randn(3, 2), torch.zeros(3, dtype=torch.float64),
                        torch.tensor([0, 1, 2]), None, 0.5)


def _exact_top_k(weights: torch.Tensor, bias: torch.Tensor, h: torch.Tensor, k: int, excluded=()) -> tuple[list, list]:
    """The definition, in float64: higher score first, then lower index; excluded items left out."""
    scores = (h.double() @ weights.double().T + bias.double()).numpy()
    scores[list(excluded)] = -np.inf
    order = np.lexsort((np.arange(len(scores)), -scores))[:k]
    order = [int(j) for j in order if scores[j] > -np.inf]
    return order, scores[order].tolist()


def _table_top_k(table: native.ScoreTable, h: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    return table.top_k(table.screen(h), h, k)


def _check_the_bound(table: native.ScoreTable, weights: torch.Tensor, bias: torch.Tensor, h: torch.Tensor) -> None:
    """The panels hold q = round(w / s) (+ 128), and every approximate score is within the error bound
    that g4r_refine relies on, computed here in float64 from its definition (kernels.c)."""
    n, d = weights.shape
    panels = table.panels.transpose(0, 2, 1, 3).reshape(-1, table.panels.shape[1] * 4)[:n]
    q = panels.astype(np.float64) - 128
    assert not q[:, d:].any() and np.abs(q).max() <= 127
    w, s = weights.double().numpy(), table.scale[:n].astype(np.float64)
    w_hat = q[:, :d] * s[:, None]
    assert (np.abs(w - w_hat) <= s[:, None] / 2 * (1 + 1e-6)).all()
    assert (table.nrm >= np.linalg.norm(w, axis=1)).all()
    assert (table.c >= np.linalg.norm(w - w_hat, axis=1)).all()
    approx = table.screen(h).double().numpy()
    hd = h.double().numpy()
    for r in range(len(hd)):
        t = np.float32(np.abs(h[r].numpy()).max() / np.float32(127))
        h_hat = np.rint(h[r].numpy() / t).astype(np.float64) * float(t)
        g = (2 * d + 4) * 2.0**-24
        bound = ((g * np.linalg.norm(hd[r]) + np.linalg.norm(hd[r] - h_hat)) * table.nrm + np.linalg.norm(h_hat) * table.c
                 + table.beta)
        exact = w @ hd[r] + bias.double().numpy()
        assert (np.abs(exact - approx[r]) <= bound).all()


@pytest.mark.parametrize("d, n", [(100, 37_286), (7, 300), (1, 256), (64, 5), (3, 65)])
def test_score_table_gives_the_exact_top_k_whatever_the_batch(ops, d, n):
    g = torch.Generator().manual_seed(d + n)
    weights, bias, h = torch.randn(n, d, generator=g), torch.randn(n, generator=g), torch.randn(9, d, generator=g)
    table = native.ScoreTable(weights, bias)
    _check_the_bound(table, weights, bias, h)
    k = min(20, n)
    values, indices = _table_top_k(table, h, k)
    if n > 1000:  # the bounds are tight: a few more than k items are scored exactly, not the catalogue
        assert k <= table.scored_exactly < 5 * k
    for r in range(9):
        order, scores = _exact_top_k(weights, bias, h[r], k)
        assert indices[r].tolist() == order
        assert np.allclose(values[r].numpy(), scores, rtol=1e-5, atol=1e-5)
    for b in (1, 2, 3, 4, 5, 8):  # every group size of the kernel, and groups after a full one
        sub = _table_top_k(table, h[:b].contiguous(), k)
        assert torch.equal(sub[0], values[:b]) and torch.equal(sub[1], indices[:b])
    for r in range(9):
        alone = _table_top_k(table, h[r : r + 1].contiguous(), k)
        assert torch.equal(alone[0], values[r : r + 1]) and torch.equal(alone[1], indices[r : r + 1])


def test_score_table_is_exact_where_8_bits_cannot_tell_items_apart(ops):
    """Items a thousandth apart (the 8-bit table resolves a 127th of the largest weight) and exact
    duplicates (ties: the lower index first)."""
    g = torch.Generator().manual_seed(5)
    base = torch.randn(1, 48, generator=g)
    weights = base * (1 + 1e-3 * torch.randn(400, 1, generator=g)) + 1e-4 * torch.randn(400, 48, generator=g)
    weights[200:260] = weights[100:160]  # duplicates of other rows
    bias = torch.zeros(400)
    bias[200:260] = bias[100:160]
    h = torch.cat([base, -base, torch.randn(2, 48, generator=g)])
    table, every_item = native.ScoreTable(weights, bias), native.ScoreTable(weights, bias)
    every_item.c[:], every_item.c_max = math.inf, math.inf  # no item ruled out: all scored exactly
    for k in (1, 20, 400):
        values, indices = _table_top_k(table, h, k)
        assert torch.equal(values, _table_top_k(every_item, h, k)[0])
        assert torch.equal(indices, _table_top_k(every_item, h, k)[1])
        for r in range(len(h)):
            order, scores = _exact_top_k(weights, bias, h[r], k)
            assert np.allclose(values[r].numpy(), scores, rtol=1e-5, atol=1e-5)
            assert indices[r, : min(k, 10)].tolist() == order[:10]  # the float32 and float64 orders part only in near-ties
    duplicates = indices[0].tolist()
    assert all(duplicates.index(j) < duplicates.index(j + 100) for j in range(100, 160))  # ties: the lower index first


def test_score_table_leaves_out_excluded_items(ops):
    g = torch.Generator().manual_seed(6)
    weights, bias, h = torch.randn(50, 8, generator=g), torch.randn(50, generator=g), torch.randn(2, 8, generator=g)
    table = native.ScoreTable(weights, bias)
    approx = table.screen(h)
    best = _exact_top_k(weights, bias, h[0], 10)[0]
    approx[0, best[:5]] = -math.inf  # the five best
    approx[1, 3:] = -math.inf  # all but three
    approx[1, 0] = math.nan  # counts as excluded
    values, indices = table.top_k(approx, h, 10)
    assert indices[0].tolist() == _exact_top_k(weights, bias, h[0], 10, best[:5])[0]
    assert indices[1, :2].tolist() == _exact_top_k(weights, bias, h[1], 2, [0, *range(3, 50)])[0]
    assert values[1, 2:].tolist() == [-math.inf] * 8


def test_score_table_refuses_what_does_not_fit(ops):
    table = native.ScoreTable(torch.randn(50, 8), torch.randn(50))
    with pytest.raises(ValueError, match="does not fit"):
        table.screen(torch.randn(2, 7))
    with pytest.raises(ValueError, match="contiguous"):
        table.screen(torch.randn(8, 2).t())
    with pytest.raises(ValueError, match="k = 51"):
        table.top_k(torch.zeros(2, 50), torch.randn(2, 8), 51)
    with pytest.raises(ValueError, match="do not fit"):
        native.ScoreTable(torch.randn(50, 8), torch.randn(49))
    with pytest.raises(ValueError, match="over the kernels' 1024"):  # integer sums would no longer be exact in float32
        native.ScoreTable(torch.randn(5, 1025), torch.randn(5))


def test_score_table_keeps_small_scratch_only(ops, monkeypatch):
    g = torch.Generator().manual_seed(8)
    weights, bias, h = torch.randn(3_000, 16, generator=g), torch.randn(3_000, generator=g), torch.randn(6, 16, generator=g)
    table = native.ScoreTable(weights, bias)
    monkeypatch.setattr(table.scratch, "keep_bytes", 4 * 3_000 * 2)  # two sessions' scores at most
    small = _table_top_k(table, h[:2].contiguous(), 10)
    kept = table.scratch._local.buffers
    assert kept["approx"][0].nbytes <= table.scratch.keep_bytes
    large = _table_top_k(table, h, 10)  # six sessions: scratch of their own, not kept
    assert kept["approx"][0].nbytes <= table.scratch.keep_bytes
    assert torch.equal(large[1][:2], small[1]) and torch.equal(large[0][:2], small[0])
    for r in range(6):
        assert large[1][r].tolist() == _exact_top_k(weights, bias, h[r], 10)[0]


DEFAULT_TUNING = native.TUNING_FLAGS


@pytest.fixture
def without_avx512(monkeypatch, tmp_path):
    """The kernels as built for a processor without AVX-512 (no VNNI byte products: plain C loops)."""
    import platform

    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("an x86 option")
    monkeypatch.setenv("GRU4REC_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(native, "TUNING_FLAGS", [["-march=native", "-mno-avx512f"]])
    native.library.cache_clear()
    try:
        assert native.library() is not None
        yield
    finally:
        native.library.cache_clear()


def test_score_table_without_avx512_is_the_same_computation(ops, without_avx512, monkeypatch):
    assert native.library().g4r_score_vnni() == 0
    g = torch.Generator().manual_seed(3)
    weights, bias, h = torch.randn(1_000, 24, generator=g), torch.randn(1_000, generator=g), torch.randn(7, 24, generator=g)
    table = native.ScoreTable(weights, bias)
    _check_the_bound(table, weights, bias, h)
    values, indices = _table_top_k(table, h, 20)
    for b in (1, 2, 3, 4, 7):
        sub = _table_top_k(table, h[:b].contiguous(), 20)
        assert torch.equal(sub[0], values[:b]) and torch.equal(sub[1], indices[:b])
    for r in range(7):
        assert indices[r].tolist() == _exact_top_k(weights, bias, h[r], 20)[0]
    plain_c = table.screen(h).clone()
    monkeypatch.setattr(native, "TUNING_FLAGS", DEFAULT_TUNING)  # back to this processor's own build
    native.library.cache_clear()
    assert torch.equal(native.ScoreTable(weights, bias).screen(h), plain_c)  # integer sums: the same on every processor


@pytest.mark.parametrize("mm", ["auto", "1"], ids=["mm-chosen", "mm-blocked"])
@pytest.mark.parametrize("loss", ["cross-entropy", "bpr-max"])
@pytest.mark.parametrize("mode", [dict(), dict(constrained_embedding=False, embedding=7)], ids=["shared", "separate"])
def test_native_and_pytorch_fused_steps_train_the_same_model(loss, mode, mm, monkeypatch):
    """Whole epochs with dropout, two layers and momentum: same losses and weights either way."""
    monkeypatch.setenv("GRU4REC_NATIVE_MM", mm)
    n_items = 60
    sessions = cyclic(n_items, 80, seed=1, min_clicks=2)
    counts = np.bincount(sessions.items, minlength=n_items) + 1
    params = HyperParams(layers=(24, 12), batch_size=9, n_sample=20, learning_rate=0.05, momentum=0.3, n_epochs=1,
                         dropout_p_embed=0.2, dropout_p_hidden=0.3, logq=0.5, loss=loss, sample_cache_size=2000, **mode)
    native_run = Trainer(params, sessions, counts, CPU, seed=4, step="fused")  # seeds the global RNG (dropout)
    assert isinstance(native_run.fused.ops, native.NativeOps)
    a = native_run.train_epoch(1)
    torch_run = Trainer(params, sessions, counts, CPU, seed=4, step="fused")
    torch_run.fused = FusedStep(torch_run.model, torch_run.optimizers[0], params.training, torch_run.loss_fn,
                                ops=TorchOps(n_items, CPU))
    b = torch_run.train_epoch(1)
    assert a.loss == pytest.approx(b.loss, rel=1e-4)
    for (name, v), w in zip(native_run.model.state_dict().items(), torch_run.model.state_dict().values()):
        assert torch.allclose(v, w, rtol=1e-3, atol=1e-5), name


def test_disabled_by_environment(monkeypatch):
    native.library.cache_clear()
    try:
        monkeypatch.setenv("GRU4REC_NATIVE", "0")
        assert native.library() is None
        assert not native.usable(torch.zeros(2))
        params = HyperParams(layers=(8,), batch_size=3, n_sample=4, n_epochs=1)
        trainer = Trainer(params, cyclic(20, 10, 0, min_clicks=2), np.ones(20), CPU, seed=0, step="fused")
        assert isinstance(trainer.fused.ops, TorchOps)  # the portable step, not an error
        assert isinstance(trainer.optimizers[0], AdagradMomentum)
        trainer.train_epoch(1)
    finally:
        native.library.cache_clear()


def test_no_compiler_or_broken_build_falls_back_with_a_warning(monkeypatch, tmp_path, caplog):
    native.library.cache_clear()
    try:
        monkeypatch.setenv("GRU4REC_CACHE_DIR", str(tmp_path / "cache"))
        monkeypatch.setattr(native, "_compiler", lambda: None)
        assert native.library() is None
        assert "no C compiler" in caplog.text
        native.library.cache_clear()
        monkeypatch.undo()
        monkeypatch.setenv("GRU4REC_CACHE_DIR", str(tmp_path / "cache"))
        broken = tmp_path / "broken.c"
        broken.write_text("this is not C;\n")
        monkeypatch.setattr(native, "SOURCE", broken)
        assert native.library() is None
        assert "could not compile" in caplog.text
        assert list((tmp_path / "cache").iterdir()) == []  # no half-written library left behind
    finally:
        native.library.cache_clear()


def test_build_is_cached_per_source(monkeypatch, tmp_path):
    native.library.cache_clear()
    try:
        monkeypatch.setenv("GRU4REC_CACHE_DIR", str(tmp_path))
        assert native.library() is not None
        built = sorted(p.name for p in tmp_path.iterdir())
        assert len(built) == 1 and built[0].startswith("kernels-") and built[0].endswith(".so")
        mtime = (tmp_path / built[0]).stat().st_mtime_ns
        native.library.cache_clear()
        assert native.library() is not None  # found, not rebuilt
        assert (tmp_path / built[0]).stat().st_mtime_ns == mtime
        assert sorted(p.name for p in tmp_path.iterdir()) == built
    finally:
        native.library.cache_clear()


def test_out_of_range_indices_raise_instead_of_corrupting_memory(ops):
    with pytest.raises(IndexError):
        ops.distinct(torch.tensor([3, 500]), 1)
    assert torch.equal(ops.slot, torch.full((500,), -1))
    x, W = torch.randn(2, 4), torch.randn(3, 4)
    for loss in LOSSES[1:3]:
        with pytest.raises(IndexError):
            ops.output_grad(loss, x, W, torch.zeros(3), torch.tensor([0, 1, 3]), None, 0.5)
        with pytest.raises(IndexError):
            ops.output_grad(loss, x, W, torch.zeros(3), torch.tensor([0]), None, 0.5)  # fewer columns than rows
    # scratch smaller than the kernel needs: refused before anything is written
    OT, col_of, dOT, db = torch.randn(3, 2), torch.tensor([0, 1, 2]), torch.zeros(3, 2), torch.zeros(3)
    small = torch.zeros(ops.lib.g4r_work_floats(1, 2, 3) - 1)
    for fn, args in ((ops.lib.g4r_xe_grad, (None, 2, 3, 3, 0.0, 0.5, 1e-24)),
                     (ops.lib.g4r_bprmax_grad, (2, 3, 3, 0.5, 1.0, 0.5, 1e-24))):
        n_small = ops.lib.g4r_work_floats(int(fn is ops.lib.g4r_bprmax_grad), 2, 3) - 1
        value = fn(OT.data_ptr(), db.data_ptr(), col_of.data_ptr(), *args, small.data_ptr(), n_small, dOT.data_ptr(), db.data_ptr())
        assert value == -math.inf
    assert torch.equal(dOT, torch.zeros(3, 2))
    p = torch.zeros(4, 2)
    with pytest.raises(IndexError):
        native.adagrad_rows(p, torch.zeros(4, 2), None, torch.tensor([1, 4]), torch.ones(2, 2), 0.1, 0.0, 1e-6)
    assert torch.equal(p, torch.zeros(4, 2))  # nothing was updated


@pytest.mark.parametrize("momentum", [0.0, 0.4])
def test_output_rows_update_is_the_optimiser_update(momentum):
    """One pass for the shared-mode item rows: W rows get dW plus the inputs' gradients (inputs
    repeat), bias rows only where they are score columns; the same as AdagradMomentum on Gradients."""
    gen = torch.Generator().manual_seed(8)
    W, b = torch.randn(30, 6, generator=gen), torch.randn(30, 1, generator=gen)
    rows = torch.tensor([4, 0, 17, 29, 8])
    dW, db = torch.randn(5, 6, generator=gen), torch.randn(5, generator=gen)
    is_column = torch.tensor([1, 0, 1, 1, 0], dtype=torch.uint8)
    in_row, dx = torch.tensor([1, 4, 1]), torch.randn(3, 6, generator=gen)
    want_W, want_b = W.clone(), b.clone()
    reference = AdagradMomentum([want_W, want_b], lr=0.1, momentum=momentum)
    for _ in range(2):  # twice: the second update starts from non-zero state
        g = dW.clone().index_add_(0, in_row, dx)
        keep = is_column.bool()
        reference.apply(Gradients(sparse=[(want_W, rows, g), (want_b, rows[keep], db[keep].unsqueeze(1))], unique=True))
    opt = AdagradMomentum([W, b], lr=0.1, momentum=momentum)
    for _ in range(2):
        native.output_rows_update(opt, W, b, rows, dW.clone(), db, is_column, in_row, dx)
    assert close(W, want_W, 1e-6) and close(b, want_b, 1e-6)
    assert torch.equal(b[[0, 8]], want_b[[0, 8]])  # input-only items' biases untouched
    for key in opt.state[W]:
        assert close(opt.state[W][key], reference.state[want_W][key], 1e-6)


def test_output_rows_update_refuses_bad_rows():
    W, b = torch.zeros(4, 2), torch.zeros(4, 1)
    opt = AdagradMomentum([W, b], lr=0.1)
    args = (torch.ones(2, 2), torch.ones(2), torch.ones(2, dtype=torch.uint8))
    with pytest.raises(IndexError):
        native.output_rows_update(opt, W, b, torch.tensor([1, 4]), *args, torch.tensor([0]), torch.ones(1, 2))
    with pytest.raises(IndexError):
        native.output_rows_update(opt, W, b, torch.tensor([1, 2]), *args, torch.tensor([2]), torch.ones(1, 2))
    with pytest.raises(ValueError):
        native.output_rows_update(opt, W, b, torch.tensor([1, 2]), torch.ones(3, 2), *args[1:], torch.tensor([0]),
                                  torch.ones(1, 2))
    assert torch.equal(W, torch.zeros(4, 2)) and torch.equal(b, torch.zeros(4, 1))


GRU_MODES = [dict(layers=(100,)), dict(layers=(64, 32), constrained_embedding=False, embedding=48),
             dict(layers=(50, 40, 30), constrained_embedding=False), dict(layers=(70, 130))]


def _random_model(n_items: int, seed: int = 0, **config):
    from gru4rec.model.config import ModelConfig
    from gru4rec.model.network import GRU4Rec

    torch.manual_seed(seed)
    model = GRU4Rec(n_items, ModelConfig(**config)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)  # biases too, and larger than the initialisation: every term counts
    return model


@pytest.mark.parametrize("config", GRU_MODES, ids=["shared", "separate-2-layers", "one-hot-3-layers", "shared-2-layers"])
def test_gru_steps_are_the_model_step_and_independent_of_the_batch(ops, config):
    model = _random_model(500, **config)
    steps = native.GRUSteps(model)
    rng = np.random.default_rng(1)
    states = rng.normal(size=(9, sum(config["layers"]))).astype(np.float32)
    for _ in range(3):  # a few steps in a row, from states that are not zero
        items = rng.integers(0, 500, size=9)
        with torch.inference_mode():
            expected = model.step_packed(torch.from_numpy(items), torch.from_numpy(states)).numpy()
        batched = states.copy()
        steps.step(batched, np.arange(9), items)
        assert np.allclose(batched, expected, rtol=1e-5, atol=2e-6)
        for rows in ([4], [8, 0, 3], [1, 2, 5, 6, 7]):  # alone and in other company: the same bits
            some = states.copy()
            steps.step(some, np.array(rows), items[rows])
            assert np.array_equal(some[rows], batched[rows])
            others = np.setdiff1d(np.arange(9), rows)
            assert np.array_equal(some[others], states[others])  # rows not named are left alone
        states = batched


def test_gru_steps_refuse_what_does_not_fit(ops):
    model = _random_model(20, layers=(8,))
    steps = native.GRUSteps(model)
    states = np.zeros((3, 8), dtype=np.float32)
    with pytest.raises(IndexError):
        steps.step(states, np.array([0, 1]), np.array([0, 20]))
    with pytest.raises(IndexError):
        steps.step(states, np.array([0, 3]), np.array([0, 1]))
    assert not states.any()  # nothing was written
    with pytest.raises(ValueError, match="state of 8"):
        steps.step(np.zeros((3, 9), dtype=np.float32), np.array([0]), np.array([0]))
    with pytest.raises(ValueError, match="rows"):
        steps.step(states, np.array([0.0]), np.array([0]))


def test_gru_steps_without_avx512_are_the_same_computation(ops, without_avx512):
    model = _random_model(300, layers=(37, 20))
    rng = np.random.default_rng(2)
    states, items = rng.normal(size=(6, 57)).astype(np.float32), rng.integers(0, 300, size=6)
    with torch.inference_mode():
        expected = model.step_packed(torch.from_numpy(items), torch.from_numpy(states)).numpy()
    steps = native.GRUSteps(model)
    batched = states.copy()
    steps.step(batched, np.arange(6), items)
    assert np.allclose(batched, expected, rtol=1e-5, atol=2e-6)
    alone = states.copy()
    for r in range(6):
        steps.step(alone, np.array([r]), items[r : r + 1])
    assert np.array_equal(alone, batched)


def test_score_items_are_the_exact_scores_of_the_top_k(ops):
    g = torch.Generator().manual_seed(9)
    weights, bias, h = torch.randn(5_000, 24, generator=g), torch.randn(5_000, generator=g), torch.randn(3, 24, generator=g)
    values, indices = _table_top_k(native.ScoreTable(weights, bias), h, 20)
    labels = torch.cat([indices, torch.full((3, 5), -1), torch.randint(0, 5_000, (3, 40), generator=g)], dim=1)
    scores = native.score_items(weights, bias, h, labels)
    assert torch.equal(scores[:, :20], values)  # bit for bit: an item scores the same found either way
    assert (scores[:, 20:25] == -math.inf).all()
    reference = (h.double()[:, None, :] * weights.double()[labels[:, 25:]]).sum(-1) + bias.double()[labels[:, 25:]]
    assert np.allclose(scores[:, 25:].numpy(), reference.numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(IndexError):
        native.score_items(weights, bias, h, torch.tensor([[0, 5_000]] * 3))
    with pytest.raises(ValueError, match="do not fit"):
        native.score_items(weights, bias, h[:2], labels)
