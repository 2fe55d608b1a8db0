"""The self-check that makes a faulty fast training step harmless: on its first mini-batches the fast
step is compared with the eager step on the same inputs and dropout masks, and training goes on with
the eager step (one warning) when they disagree, when the fast step raises, or when a CUDA graph
cannot be captured. Tested by breaking the fast steps on purpose; the epoch loss reported is the
mean per event (issue 12, defect 8)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from gru4rec.data.sessions import Sessions
from gru4rec.training import native, selfcheck
from gru4rec.training.eager import Batch, eager_step
from gru4rec.training.fixed_epoch import FixedEpoch
from gru4rec.training.fused import FusedStep, TorchOps
from gru4rec.training.params import HyperParams
from gru4rec.training.trainer import Trainer
from session_factories import cyclic
from step_faults import forget_the_output_bias

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_torch_thread")
GIVE_UP = "training continues with the eager step"


N_ITEMS = 40
SESSIONS = cyclic(N_ITEMS, 50, seed=2, min_clicks=2)
COUNTS = np.bincount(SESSIONS.items, minlength=N_ITEMS) + 1


def params(**kw) -> HyperParams:
    base = dict(layers=(10,), batch_size=6, n_sample=8, learning_rate=0.05, momentum=0.3, n_epochs=1, logq=0.5,
                dropout_p_embed=0.1, dropout_p_hidden=0.3, sample_cache_size=80)
    return HyperParams(**{**base, **kw})


def train(p: HyperParams, step: str, epochs: int = 2, **kw) -> Trainer:
    trainer = Trainer(p, SESSIONS, COUNTS, CPU, seed=7, step=step, **kw)
    for epoch in range(1, epochs + 1):
        trainer.train_epoch(epoch)
    return trainer


def same_model(a: Trainer, b: Trainer, tol: float = 2e-5) -> None:
    for (name, v), w in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.allclose(v, w, rtol=1e-4, atol=tol), name


class BrokenOps(TorchOps):
    """A fast path with a plausible bug: the reset gate's gradient has the wrong sign."""

    @staticmethod
    def gru_backward(dx, mask, h, rz, n, gh):
        dgi, dgh, dbi, dbh = TorchOps.gru_backward(dx, mask, h, rz, n, gh)
        H = h.shape[1]
        dgi[:, :H] *= -1
        return dgi, dgh, dgi.sum(0), dbh


class RaisingOps(TorchOps):
    @staticmethod
    def output_grad(*args, **kwargs):
        raise RuntimeError("illegal instruction in a kernel")


@pytest.mark.parametrize("loss", ["cross-entropy", "bpr-max"])
def test_passing_check_is_invisible(loss, caplog):
    """A correct fast step passes quietly and the run is exactly the unchecked run."""
    with caplog.at_level(logging.WARNING):
        checked = train(params(loss=loss), "fused")
    unchecked = train(params(loss=loss), "fused", self_check=False)
    assert checked.kind == "fused" and checked.checks_left == 0
    assert GIVE_UP not in caplog.text
    for v, w in zip(checked.model.state_dict().values(), unchecked.model.state_dict().values()):
        assert torch.equal(v, w)


@pytest.mark.parametrize("broken", [BrokenOps, RaisingOps], ids=["wrong-gradient", "raises"])
def test_faulty_fused_step_falls_back_to_eager_with_one_warning(broken, caplog, monkeypatch):
    monkeypatch.setattr("gru4rec.training.fused.make_ops", lambda n_items, device: broken(n_items, device))
    with caplog.at_level(logging.WARNING):
        faulty = train(params(), "auto")
    warnings = [r for r in caplog.records if GIVE_UP in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    assert "fused training step" in warnings[0].getMessage()
    assert faulty.kind == "eager" and faulty.fused is None
    # from the first mini-batch on it is the eager run: same negatives, masks and updates
    same_model(faulty, train(params(), "eager"))


def test_faulty_fixed_step_hands_the_epoch_to_eager(caplog, monkeypatch):
    forget_the_output_bias(monkeypatch)
    with caplog.at_level(logging.WARNING):
        faulty = train(params(), "fixed")
    assert sum(GIVE_UP in r.getMessage() for r in caplog.records) == 1
    assert "By.weight" in caplog.text  # the message says what differed
    assert faulty.kind == "eager" and faulty.fixed is None
    same_model(faulty, train(params(), "eager"))


def test_failed_capture_hands_over_after_the_warm_up(caplog, monkeypatch):
    """On CUDA a graph is captured after warm-up steps; if capture fails the epoch goes on eagerly."""
    def fail(self):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(FixedEpoch, "wants_capture", lambda self, warmup: self.graph is None and self.warmed >= warmup)
    monkeypatch.setattr(FixedEpoch, "capture", fail)
    with caplog.at_level(logging.WARNING):
        faulty = train(params(), "fixed")
    messages = [r.getMessage() for r in caplog.records if GIVE_UP in r.getMessage()]
    assert len(messages) == 1 and "capturing it as a CUDA graph failed" in messages[0]
    same_model(faulty, train(params(), "eager"))


def test_check_compares_against_the_eager_step_itself():
    """The reference of the check is the eager step: fed the fast step's masks, it reproduces the
    eager Trainer's step exactly (here the RNG gives both the same masks)."""
    p = params()
    a = Trainer(p, SESSIONS, COUNTS, CPU, seed=1, step="eager")
    b = Trainer(p, SESSIONS, COUNTS, CPU, seed=1, step="eager")
    inputs, targets = torch.tensor([0, 5, 9, 11, 3, 7]), torch.tensor([1, 6, 10, 12, 4, 8])
    batch = a.batch(inputs, targets)
    hidden = a.model.init_hidden(6)
    a.model.train()
    b.model.train()
    rng = torch.random.get_rng_state()
    fused = FusedStep(b.model, b.optimizers[0], p.training, b.loss_fn)
    fused.gradients(inputs, batch.columns, b.model.init_hidden(6), batch.log_q)  # draws the masks the eager step would
    torch.random.set_rng_state(rng)
    loss_a, hidden_a = eager_step(a.model, a.optimizers, a.loss_fn, p.batch_size, batch, hidden)
    loss_b, hidden_b = eager_step(b.model, b.optimizers, b.loss_fn, p.batch_size, batch, hidden, fused.masks)
    assert torch.equal(loss_a, loss_b) and all(torch.equal(x, y) for x, y in zip(hidden_a, hidden_b))
    for v, w in zip(a.model.state_dict().values(), b.model.state_dict().values()):
        assert torch.equal(v, w)


def test_snapshot_restores_only_what_a_step_touches():
    trainer = Trainer(params(), SESSIONS, COUNTS, CPU, seed=0, step="eager")
    model, opt = trainer.model, trainer.optimizers[0]
    ids = torch.tensor([3, 3, 17])
    snapshot = selfcheck.Snapshot(model, opt, ids)
    assert snapshot.saved["Wy.weight"].shape == (2, 10)  # two distinct rows, never the whole table
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.Wy.weight[3] += 1.0
        model.cells[0].weight_hh += 1.0
        opt.state_for(model.Wy.weight)["acc"][17] += 2.0
    snapshot.restore()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.count_nonzero(opt.state_for(model.Wy.weight)["acc"]) == 0


def test_difference_is_relative_to_the_eager_change():
    before = torch.zeros(4)
    eager = torch.tensor([0.05, -0.05, 0.0, 0.05])
    assert selfcheck.difference("w", eager + 1e-7 * (eager != 0), eager, before) is None  # rounding
    assert "differs" in selfcheck.difference("w", eager * 1.01, eager, before)  # 1% of the step
    moved = eager.clone()
    moved[2] = 1e-5  # a row the eager step did not touch moved
    assert "untouched" in selfcheck.difference("w", moved, eager, before)
    assert "not finite" in selfcheck.difference("w", torch.full((4,), float("nan")), eager, before)


# ---- issue 12, defect 8: the epoch loss is a mean per event ----
@pytest.mark.parametrize("step", ["eager", "fused", "fixed"])
def test_epoch_loss_is_the_mean_per_event_whatever_the_batch_size(step):
    """40 two-click sessions, one mini-batch of 40 rows. With batch_size=5000 the reported loss used
    to be divided by 5000 instead of 40 (0.03 instead of ~log(50)); the gradient scale (summed loss
    over batch_size, as the reference) is unchanged."""
    sessions = Sessions(np.arange(80) % 60, np.arange(0, 81, 2), np.array([f"s{i}" for i in range(40)], dtype=object))
    base = dict(layers=(8,), n_sample=10, learning_rate=1e-4, n_epochs=1, sample_cache_size=100)
    big = Trainer(HyperParams(batch_size=5000, **base), sessions, np.ones(60), CPU, seed=0, step=step).train_epoch(1)
    exact = Trainer(HyperParams(batch_size=40, **base), sessions, np.ones(60), CPU, seed=0, step=step).train_epoch(1)
    assert big.events == exact.events == 40
    assert big.loss == pytest.approx(exact.loss, rel=1e-6)  # same first step, same per-event loss
    assert big.loss == pytest.approx(math.log(50), rel=0.05)  # near-uniform scores over 40 + 10 columns


def test_gradient_scale_is_still_the_configured_batch_size():
    """Only the report changed: the update still divides the summed loss by batch_size (reference)."""
    sessions = Sessions(np.arange(80) % 60, np.arange(0, 81, 2), np.array([f"s{i}" for i in range(40)], dtype=object))
    base = dict(layers=(8,), n_sample=10, learning_rate=0.05, n_epochs=1, sample_cache_size=100)
    trainer = Trainer(HyperParams(batch_size=5000, **base), sessions, np.ones(60), CPU, seed=0, step="eager")
    batch = trainer.batch(torch.arange(0, 80, 2) % 60, torch.arange(1, 80, 2) % 60)
    loss, _ = eager_step(trainer.model, trainer.optimizers, trainer.loss_fn, 5000, batch, trainer.model.init_hidden(40))
    O = trainer.model.score(trainer.model.step(batch.inputs, trainer.model.init_hidden(40)), batch.columns)
    assert loss.item() == pytest.approx(trainer.loss_fn(O, batch.log_q).item() / 5000, rel=1e-3)


def test_native_kernels_flag_is_honoured_by_the_check(monkeypatch):
    """Sanity: the checked default path on this machine is the compiled one when it can be built."""
    trainer = Trainer(params(), SESSIONS, COUNTS, CPU, seed=0)
    assert trainer.kind == "fused"
    assert isinstance(trainer.fused.ops, native.NativeOps) == (native.library() is not None)
    assert isinstance(Batch(torch.zeros(1), torch.zeros(1), torch.zeros(0), None).columns, torch.Tensor)


@pytest.mark.parametrize("step", ["auto", "eager"])
def test_cli_logs_the_per_event_loss_with_a_batch_larger_than_the_data(step, tmp_path, caplog):
    """The case of the report: batch_size=5000 on 2,717 sessions. Every session is one row of the
    only mini-batch, so the first epoch's loss is about log(columns) = log(2,717 + 64) at the start;
    divided by 5000 instead of 2,717 rows it used to log 0.54 of that. Through `gru4rec train`."""
    from gru4rec.cli import main

    n_sessions, n_sample = 2717, 64
    lines = ["SessionId\tItemId\tTime"]
    lines += [f"s{s}\titem{(s * 7 + k) % 500}\t{1e9 + 60 * s + k}" for s in range(n_sessions) for k in range(2)]
    train_file = tmp_path / "train.tsv"
    train_file.write_text("\n".join(lines) + "\n")
    sets = {"batch_size": 5000, "layers": "[8]", "n_sample": n_sample, "sample_cache_size": 640,
            "learning_rate": 1e-4, "n_epochs": 1}
    argv = ["train", str(train_file), "--out", str(tmp_path / "m"), "--device", "cpu", "--step", step]
    for key, value in sets.items():
        argv += ["--set", f"{key}={value}"]
    with caplog.at_level(logging.INFO):
        assert main(argv) == 0
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch 1/1: loss ")]
    assert len(logged) == 1, caplog.text
    loss = float(logged[0].split()[3].rstrip(","))
    assert loss == pytest.approx(math.log(n_sessions + n_sample), rel=0.02)
