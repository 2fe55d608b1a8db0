"""SASRec training: windows over sessions, losses (the sampled softmax's logQ correction), parameters
by architecture name, and whole runs (validation picks the best epoch, resume, refused options)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from gru4rec.data.sessions import Sessions
from gru4rec.foundation.errors import UserError
from gru4rec.model.architectures import ALL
from gru4rec.model.checkpoint import load_checkpoint
from gru4rec.training.params import from_mapping, load_params, save_params
from gru4rec.training.run import train
from gru4rec.training.sasrec import SASRecTrainer, gbce, sampled_softmax, session_windows
from gru4rec.training.sasrec_params import SASRecParams


def sessions_of(lengths: list[int]) -> Sessions:
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    return Sessions(np.arange(offsets[-1], dtype=np.int64), offsets, np.arange(len(lengths)).astype(str))


def predicted_targets(sessions: Sessions, max_len: int) -> list[tuple[int, int]]:
    """(target position, context length) of every loss term the windows produce."""
    start, n_in, loss_from = session_windows(sessions, max_len)
    out = []
    for s, n, lf in zip(start, n_in, loss_from):
        assert 1 <= n <= max_len
        out += [(s + j + 1, j + 1) for j in range(lf, n)]
    return out


@pytest.mark.parametrize("max_len", [1, 2, 3, 5, 50])
def test_windows_predict_every_next_click_exactly_once(max_len):
    lengths = [2, 1, 3, 7, 12, 6, 4]
    sessions = sessions_of(lengths)
    got = predicted_targets(sessions, max_len)
    targets = sorted(t for t, _ in got)
    expected = sorted(o + j for o, n in zip(sessions.offsets[:-1], lengths) for j in range(1, n))
    assert targets == expected  # every click after the first, once; never across sessions
    for target, context in got:  # past the first window, at least max_len // 2 clicks of context
        session = np.searchsorted(sessions.offsets, target, side="right") - 1
        position = target - sessions.offsets[session]
        assert context == position or context >= max(1, max_len // 2)


def test_batches_hold_targets_of_their_own_session_and_no_padding_loss():
    sessions = sessions_of([2, 5, 3, 9])
    params = SASRecParams(hidden_size=8, n_heads=1, ff_size=8, max_len=4, batch_size=3, n_epochs=1)
    trainer = SASRecTrainer(params, sessions, np.ones(sessions.n_events, dtype=np.int64), torch.device("cpu"))
    seen = []
    for batch in trainer.batches(1):
        inputs, targets, mask = trainer.batch(torch.from_numpy(batch))
        assert (inputs[~mask & (inputs != trainer.model.pad)] >= 0).all()
        assert (targets[mask] == inputs[mask] + 1).all()  # items are positions here: next click = +1
        seen += targets[mask].tolist()
    assert sorted(seen) == [1, 3, 4, 5, 6, 8, 9, 11, 12, 13, 14, 15, 16, 17, 18]


def test_sampled_softmax_logq_correction_recovers_the_full_softmax_gradient():
    """With many negatives drawn from a skewed q, the logQ-corrected sampled softmax has (nearly) the
    full softmax's gradient with respect to the scores; without the correction it is far off."""
    torch.manual_seed(0)
    n, k = 40, 200_000
    counts = torch.arange(1, n + 1, dtype=torch.float64) ** 2
    q = counts / counts.sum()
    scores = torch.randn(3, n, dtype=torch.float64)
    targets = torch.tensor([0, 17, 39])
    negatives = torch.multinomial(q, k, replacement=True)
    log_expected = torch.log(k * q)

    def grad(logq: float) -> torch.Tensor:
        s = scores.clone().requires_grad_(True)
        pos = s.gather(1, targets.unsqueeze(1)).squeeze(1)
        sampled_softmax(pos, s[:, negatives], targets, negatives, log_expected, logq).backward()
        return s.grad

    s = scores.clone().requires_grad_(True)
    F.cross_entropy(s, targets).backward()
    full = s.grad
    def error(logq: float) -> float:
        return float((grad(logq) - full).abs().sum() / full.abs().sum())

    assert error(1.0) < 0.05  # measured 0.019: only the sampling noise of 200k draws
    assert error(0.0) > 0.3  # measured 0.39: the uncorrected sample favours popular items


def test_sampled_softmax_leaves_out_accidental_hits():
    pos = torch.tensor([2.0])
    neg = torch.tensor([[2.0, 0.0]])
    loss = sampled_softmax(pos, neg, torch.tensor([5]), torch.tensor([5, 1]), torch.zeros(6), 0.0)
    assert loss.item() == pytest.approx(-torch.log_softmax(torch.tensor([2.0, 0.0]), 0)[0].item())


def test_gbce_reduces_to_bce_at_t0_and_weights_positives_at_t1():
    pos, neg = torch.tensor([0.3]), torch.tensor([[0.1, -0.2]])
    targets, negatives = torch.tensor([0]), torch.tensor([1, 2])
    bce = -(F.logsigmoid(pos) + F.logsigmoid(-neg).sum())
    assert gbce(pos, neg, targets, negatives, n_items=3, t=0.0).item() == pytest.approx(bce.item())
    beta = 2 / 100  # alpha = 2 / (101 - 1); t = 1 gives beta = alpha
    expected = -(beta * F.logsigmoid(pos) + F.logsigmoid(-neg).sum())
    assert gbce(pos, neg, targets, negatives, n_items=101, t=1.0).item() == pytest.approx(expected.item())


def test_parameters_by_architecture_name(tmp_path):
    params = load_params("sasrec", ["hidden_size=32", "loss=sampled-softmax"])
    assert isinstance(params, SASRecParams) and params.hidden_size == 32 and params.loss == "sampled-softmax"
    save_params(params, tmp_path / "p.toml")
    assert load_params(str(tmp_path / "p.toml")) == params
    assert load_params(None, ["architecture=sasrec"]) == SASRecParams()
    with pytest.raises(UserError, match="unknown parameter.*'layers'"):
        from_mapping({"architecture": "sasrec", "layers": [100]})
    with pytest.raises(UserError, match="unknown architecture"):
        from_mapping({"architecture": "bert4rec"})
    with pytest.raises(UserError, match="loss"):
        from_mapping({"architecture": "sasrec", "loss": "bpr-max"})
    with pytest.raises(UserError, match="n_heads"):
        from_mapping({"architecture": "sasrec", "hidden_size": 10, "n_heads": 4})
    assert from_mapping({"architecture": "gru4rec", "layers": [10]}).layers == (10,)


def write_sessions(path, n_sessions: int, seed: int) -> None:
    """Sessions that walk a ring of 12 items (item i is followed by i + 1): easy to learn."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_sessions):
        start, length = rng.integers(12), rng.integers(2, 7)
        rows += [(s, f"item{(start + j) % 12}", 1_000_000 + s * 100 + j) for j in range(length)]
    pd.DataFrame(rows, columns=["SessionId", "ItemId", "Time"]).to_csv(path, sep="\t", index=False)


@pytest.mark.parametrize("loss, epochs", [("cross-entropy", 4), ("sampled-softmax", 4), ("gbce", 9)])
def test_training_learns_and_validation_keeps_the_best_epoch(tmp_path, loss, epochs, one_torch_thread):
    """(gBCE starts slower: with 8 of 11 items as negatives, their BCE terms dominate the first epochs.)"""
    write_sessions(tmp_path / "train.tsv", 150, 0)
    write_sessions(tmp_path / "valid.tsv", 40, 1)
    params = SASRecParams(
        hidden_size=16, n_heads=1, ff_size=16, max_len=5, dropout_p=0.0, batch_size=16, n_epochs=epochs,
        learning_rate=0.01, loss=loss, n_sample=8, sample_alpha=0.0,
    )
    history = train(tmp_path / "train.tsv", tmp_path / "m", params, valid_path=tmp_path / "valid.tsv", device="cpu", metric="mrr@5")
    assert len(history) == epochs and history[-1].loss < history[0].loss
    best = max(h.valid["mrr@5"] for h in history)
    assert best > 0.6  # the ring is nearly deterministic
    meta = json.loads((tmp_path / "m" / "metadata.json").read_text())
    assert meta["model"]["architecture"] == "sasrec" and meta["training"]["best_mrr@5"] == best
    assert meta["training"]["settings"]["loss"] == loss
    assert load_checkpoint(tmp_path / "m", architectures=ALL).model.n_items == 12


def test_resume_continues_an_interrupted_run(tmp_path, monkeypatch, one_torch_thread):
    write_sessions(tmp_path / "train.tsv", 60, 0)
    params = SASRecParams(hidden_size=8, n_heads=1, ff_size=8, max_len=4, batch_size=16, n_epochs=3)
    full = train(tmp_path / "train.tsv", tmp_path / "full", params, device="cpu")
    original = SASRecTrainer.train_epoch

    def killed_in_epoch_3(self, epoch):
        if epoch == 3:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(SASRecTrainer, "train_epoch", killed_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "train.tsv", tmp_path / "cut", params, device="cpu")
    monkeypatch.setattr(SASRecTrainer, "train_epoch", original)
    with pytest.raises(UserError, match="other parameters"):
        train(tmp_path / "train.tsv", tmp_path / "cut", params.replace(hidden_size=16), device="cpu", resume=True)
    resumed = train(tmp_path / "train.tsv", tmp_path / "cut", params, device="cpu", resume=True)
    assert [h.epoch for h in resumed] == [1, 2, 3]
    assert resumed[-1].loss == pytest.approx(full[-1].loss, rel=1e-5)


@pytest.mark.parametrize("option", [{"distributed": True}, {"init_from": "somewhere"}, {"step": "fused"}])
def test_gru_only_training_options_are_refused(tmp_path, option):
    with pytest.raises(UserError, match="GRU4Rec"):
        train(tmp_path / "missing.tsv", tmp_path / "m", SASRecParams(), **option)
