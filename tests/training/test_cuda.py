"""The training steps on CUDA: the fixed-shape step captured as a CUDA graph against the eager step,
its self-check and fallback. Skipped without a CUDA device (benchmarks/gpu_check.sh runs them)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from gru4rec.training.params import HyperParams
from gru4rec.training.trainer import Trainer
from session_factories import cyclic
from step_faults import forget_the_output_bias

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
GIVE_UP = "training continues with the eager step"


N_ITEMS = 50
SESSIONS = cyclic(N_ITEMS, 120, seed=4)
COUNTS = np.bincount(SESSIONS.items, minlength=N_ITEMS) + 1


def params(**kw) -> HyperParams:
    base = dict(layers=(16, 8), batch_size=7, n_sample=12, learning_rate=0.05, momentum=0.3, n_epochs=1, logq=0.5,
                sample_cache_size=7 * 12 * 9)
    return HyperParams(**{**base, **kw})


def train(p: HyperParams, step: str, epochs: int = 2, **kw) -> Trainer:
    trainer = Trainer(p, SESSIONS, COUNTS, torch.device("cuda"), seed=5, step=step, **kw)
    for epoch in range(1, epochs + 1):
        trainer.train_epoch(epoch)
    return trainer


@pytest.mark.parametrize("loss", ["cross-entropy", "bpr-max"])
@pytest.mark.parametrize("mode", [dict(), dict(constrained_embedding=False, embedding=7)], ids=["shared", "separate"])
def test_graph_step_trains_the_eager_model(loss, mode, caplog):
    """No dropout, so both draw nothing at random but the negatives, which come from the same stream."""
    with caplog.at_level(logging.WARNING):
        fast = train(params(loss=loss, **mode), "auto")
    eager = train(params(loss=loss, **mode), "eager")
    assert GIVE_UP not in caplog.text
    assert fast.kind == "fixed" and fast.fixed is not None and fast.fixed.graph is not None  # captured and replayed
    for (name, v), w in zip(fast.model.state_dict().items(), eager.model.state_dict().values()):
        assert torch.allclose(v, w, rtol=1e-3, atol=1e-4), name


def test_graph_step_with_dropout_learns(caplog):
    """With dropout the graph draws masks for all slots (the eager step for the live rows only), so the
    runs differ in their random numbers: the graph run must still pass its check and learn as well."""
    p = params(dropout_p_embed=0.1, dropout_p_hidden=0.3, learning_rate=0.1)
    with caplog.at_level(logging.WARNING):
        fast = Trainer(p, SESSIONS, COUNTS, torch.device("cuda"), seed=5)
        losses = [fast.train_epoch(e).loss for e in range(1, 5)]
    eager = Trainer(p, SESSIONS, COUNTS, torch.device("cuda"), seed=5, step="eager")
    eager_losses = [eager.train_epoch(e).loss for e in range(1, 5)]
    assert GIVE_UP not in caplog.text and fast.kind == "fixed"
    assert losses[-1] < losses[0]
    assert losses[-1] == pytest.approx(eager_losses[-1], rel=0.1)


def test_broken_graph_step_falls_back_to_eager(caplog, monkeypatch):
    forget_the_output_bias(monkeypatch)
    with caplog.at_level(logging.WARNING):
        faulty = train(params(), "auto")
    assert sum(GIVE_UP in r.getMessage() for r in caplog.records) == 1
    assert faulty.kind == "eager"
    eager = train(params(), "eager")
    for (name, v), w in zip(faulty.model.state_dict().items(), eager.model.state_dict().values()):
        assert torch.allclose(v, w, rtol=1e-3, atol=1e-4), name


def test_other_losses_use_the_fused_step_on_cuda():
    fast = train(params(loss="top1-max"), "auto", epochs=1)
    eager = train(params(loss="top1-max"), "eager", epochs=1)
    assert fast.kind == "fused"
    for (name, v), w in zip(fast.model.state_dict().items(), eager.model.state_dict().values()):
        assert torch.allclose(v, w, rtol=1e-3, atol=1e-4), name
