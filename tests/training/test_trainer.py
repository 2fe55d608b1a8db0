"""Training (reference section 2) through the real Trainer and model: every event trained once per epoch,
the hidden state reset at exactly the right rows and steps, only B + n_sample columns scored (never
the whole catalogue), logQ wiring, learning, reproducibility, divergence, resume and best epoch."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from gru4rec.training import trainer as training_module
from gru4rec.model.checkpoint import METADATA_FILE, RESUME_FILE, load_checkpoint, load_resume_state
from gru4rec.training.params import HyperParams
from gru4rec.data.sessions import Sessions, load_eval_data
from gru4rec.foundation.errors import UserError
from gru4rec.evaluation.protocol import ModelScorer, evaluate
from gru4rec.training.fused import FusedStep
from gru4rec.model.network import GRU4Rec
from gru4rec.training.run import train
from gru4rec.training.trainer import Trainer

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class RecordingGRU4Rec(GRU4Rec):
    """The real model, additionally remembering what step() and score() were given (a subclass, not a mock)."""

    def __init__(self, n_items, params):
        super().__init__(n_items, params)
        self.steps: list[tuple[list[int], list[torch.Tensor], list[torch.Tensor]]] = []
        self.scores: list[tuple[torch.Tensor | None, torch.Tensor]] = []

    def step(self, item_indices, hidden):
        incoming = [h.detach().clone() for h in hidden]
        out = super().step(item_indices, hidden)
        if self.training:
            self.steps.append((item_indices.tolist(), incoming, [h.detach().clone() for h in out]))
        return out

    def score(self, hidden, item_indices=None):
        out = super().score(hidden, item_indices)
        if self.training:
            cols = None if item_indices is None else item_indices.detach().clone()
            self.scores.append((cols, out.detach().clone()))
        return out


class RecordingTrainer(Trainer):
    """The real Trainer, remembering each train_step's inputs and hidden state in and out (any step path)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps: list[tuple[list[int], list[torch.Tensor], list[torch.Tensor]]] = []

    def train_step(self, inputs, targets, hidden):
        incoming = [h.detach().clone() for h in hidden]
        loss, out = super().train_step(inputs, targets, hidden)
        self.steps.append((inputs.tolist(), incoming, [h.detach().clone() for h in out]))
        self.attached = getattr(self, "attached", False) or any(h.requires_grad or h.grad_fn is not None for h in out)
        return loss, out


class RecordingFusedStep(FusedStep):
    """The real fused step, remembering the score columns it was given."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.columns: list[tuple[int, torch.Tensor]] = []

    def _compute(self, inputs, columns, hidden, log_q=None):  # every way through the step goes through here
        self.columns.append((len(inputs), columns.detach().clone()))
        return super()._compute(inputs, columns, hidden, log_q)


def sessions_of(lists: list[list[int]]) -> Sessions:
    lengths = [len(x) for x in lists]
    return Sessions(
        np.concatenate([np.asarray(x, dtype=np.int64) for x in lists]),
        np.r_[0, np.cumsum(lengths)].astype(np.int64),
        np.array([f"s{i}" for i in range(len(lists))], dtype=object),
    )


def unique_item_sessions(lengths: list[int]) -> Sessions:
    """Item at position p is p: an input item tells which event (and session) it is."""
    offsets = np.r_[0, np.cumsum(lengths)]
    return sessions_of([list(range(offsets[i], offsets[i + 1])) for i in range(len(lengths))])


def cyclic_lists(n_items: int, n_sessions: int, seed: int, lo: int = 3, hi: int = 8) -> list[list[int]]:
    """Sessions that always click item (i + 1) mod n_items after item i: a pattern to learn."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_sessions):
        start, n = int(rng.integers(n_items)), int(rng.integers(lo, hi + 1))
        out.append([(start + k) % n_items for k in range(n)])
    return out


def counts_of(sessions: Sessions, n_items: int) -> np.ndarray:
    return np.bincount(sessions.items, minlength=n_items).astype(np.int64)


def small(**kw) -> HyperParams:
    base = dict(layers=(8,), batch_size=4, n_sample=6, learning_rate=0.05, n_epochs=1, sample_cache_size=600)
    base.update(kw)
    return HyperParams(**base)


# ---- one epoch: coverage and hidden-state flow (both step implementations) ----
LENGTHS = [3, 1, 2, 4, 2, 5, 1, 7, 2, 3, 6, 2, 1, 4]


@pytest.mark.parametrize("step", ["fused", "eager"])
@pytest.mark.parametrize("batch_size", [1, 3, 50])
def test_every_event_trained_once_per_epoch(batch_size, step):
    sessions = unique_item_sessions(LENGTHS)
    n_items = sessions.n_events
    trainer = RecordingTrainer(small(batch_size=batch_size), sessions, np.ones(n_items, dtype=np.int64), CPU, seed=1, step=step)
    stats = trainer.train_epoch(1)
    assert stats.events == sessions.n_events - sessions.n_sessions
    fed = sorted(i for items, _, _ in trainer.steps for i in items)
    expected = sorted(p for s in range(sessions.n_sessions) for p in range(sessions.offsets[s], sessions.offsets[s + 1] - 1))
    assert fed == expected
    assert math.isfinite(stats.loss)
    trainer.steps.clear()  # and again in the next epoch
    assert trainer.train_epoch(2).events == stats.events
    assert sorted(i for items, _, _ in trainer.steps for i in items) == expected


@pytest.mark.parametrize("step", ["fused", "eager"])
@pytest.mark.parametrize("batch_size", [2, 3])
def test_hidden_state_reset_exactly_at_session_starts(batch_size, step):
    sessions = unique_item_sessions(LENGTHS)
    n_items = sessions.n_events
    starts = set(sessions.offsets[:-1].tolist())
    params = small(batch_size=batch_size, layers=(6, 5), dropout_p_hidden=0.3)
    trainer = RecordingTrainer(params, sessions, np.ones(n_items, dtype=np.int64), CPU, seed=3, step=step)
    trainer.train_epoch(1)
    last_out: dict[int, list[torch.Tensor]] = {}  # position -> state it produced (one tensor per layer)
    n_zero_dropped = 0
    for items, incoming, outgoing in trainer.steps:
        for r, p in enumerate(items):
            if p in starts:  # a new session starts from zero, in every layer
                assert all(float(h[r].abs().sum()) == 0.0 for h in incoming), f"position {p}: state not reset"
            else:  # otherwise it continues exactly the (dropped-out) state its own session produced
                for layer, h in enumerate(incoming):
                    assert torch.equal(h[r], last_out[p - 1][layer]), f"position {p} layer {layer}: wrong state"
            last_out[p] = [h[r] for h in outgoing]
            n_zero_dropped += int((outgoing[0][r] == 0).sum())
    assert n_zero_dropped > 0  # dropout zeros were carried over (and checked above)


@pytest.mark.parametrize("step", ["fused", "eager"])
def test_training_dropout_is_drop_probability_and_state_is_detached(step):
    n_items = 40
    sessions = sessions_of(cyclic_lists(n_items, 120, seed=7))
    params = small(layers=(64, 32), batch_size=40, dropout_p_hidden=0.8)
    trainer = RecordingTrainer(params, sessions, counts_of(sessions, n_items), CPU, seed=0, step=step)
    trainer.train_epoch(1)
    for layer in range(2):
        out = torch.cat([outgoing[layer] for _, _, outgoing in trainer.steps])
        assert float((out == 0).float().mean()) == pytest.approx(0.8, abs=0.03)  # p is the DROP probability
    assert not trainer.attached  # the carried state is detached every step: no BPTT
    trainer.model.eval()
    h = trainer.model.step(torch.arange(10), trainer.model.init_hidden(10))
    assert float((h[0] == 0).float().mean()) < 0.01  # and no dropout outside training


# ---- sampled columns only, never the whole catalogue ----
def check_columns(records, params, n_items):
    """records: (rows, columns) per step."""
    samples = []
    for rows, cols in records:
        assert cols.shape == (rows + params.n_sample,)  # B + n_sample columns, never n_items
        samples.append(tuple(cols[rows:].tolist()))
    assert any(rows == params.batch_size for rows, _ in records)
    assert len(set(samples)) > len(samples) // 2  # the extra negatives change from step to step


def test_eager_step_scores_only_sampled_columns():
    n_items = 40
    sessions = sessions_of(cyclic_lists(n_items, 30, seed=0))
    params = small(batch_size=5, n_sample=7)
    model = RecordingGRU4Rec(n_items, params.model)
    trainer = Trainer(params, sessions, counts_of(sessions, n_items) + 1, CPU, seed=0, model=model, step="eager")
    trainer.train_epoch(1)
    assert model.scores, "score() was never called"
    records = []
    for (items, _, _), (cols, O) in zip(model.steps, model.scores):
        assert cols is not None, "training scored the whole catalogue"
        rows = len(items)
        assert O.shape == (rows, rows + params.n_sample)
        assert cols[:rows].tolist() == [(i + 1) % n_items for i in items]  # column i is row i's target
        records.append((rows, cols))
    check_columns(records, params, n_items)


@pytest.mark.parametrize("mode", [dict(), dict(constrained_embedding=False, embedding=6)], ids=["shared", "separate"])
def test_fused_step_scores_only_sampled_columns(mode):
    n_items = 40
    sessions = sessions_of(cyclic_lists(n_items, 30, seed=0))
    params = small(batch_size=5, n_sample=7, **mode)
    model = RecordingGRU4Rec(n_items, params.model)
    # (without the self-check, whose eager reference scores its first mini-batches' sampled columns)
    trainer = Trainer(params, sessions, counts_of(sessions, n_items) + 1, CPU, seed=0, model=model, step="fused",
                      self_check=False)
    assert trainer.fused is not None
    trainer.fused = RecordingFusedStep(model, trainer.optimizers[0], params.training, trainer.loss_fn)
    trainer.train_epoch(1)
    assert model.scores == []  # the fused path never calls score(), let alone for all items
    check_columns(trainer.fused.columns, params, n_items)


@pytest.mark.parametrize(
    "loss,extra",
    [("cross-entropy", dict(logq=0.7)), ("cross-entropy", dict(logq=0.0)), ("bpr-max", dict(bpreg=1.5, elu_param=0.5))],
)
def test_step_loss_logq_and_division_by_batch_size(loss, extra):
    n_items = 30
    sessions = sessions_of(cyclic_lists(n_items, 20, seed=1))
    counts = np.random.default_rng(0).integers(1, 50, size=n_items)
    params = small(batch_size=4, n_sample=5, sample_alpha=0.5, loss=loss, **extra)
    model = RecordingGRU4Rec(n_items, params.model)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    eager = Trainer(params, sessions, counts, CPU, seed=0, model=model, step="eager")
    inputs, targets = torch.tensor([0, 5, 9, 11]), torch.tensor([1, 6, 10, 12])
    loss_eager, _ = eager.train_step(inputs, targets, model.init_hidden(4))
    cols, O = model.scores[-1]
    cols, O = cols.numpy(), O.numpy().astype(np.float64)
    expected = 0.0
    if loss == "cross-entropy":
        logQ = np.log(counts[cols].astype(np.float64))
        logQ[4:] *= params.sample_alpha  # extra columns: Q = count ** sample_alpha
        X = O - params.logq * logQ[None, :]
        for i in range(4):
            e = np.exp(X[i] - X[i].max())
            expected += -math.log(e[i] / e.sum())
    else:
        X = np.where(O > 0, O, 0.5 * (np.exp(O) - 1))
        for i in range(4):
            neg = np.delete(X[i], i)
            sm = np.exp(neg - neg.max()) / np.exp(neg - neg.max()).sum()
            expected += -math.log(np.sum(sm / (1 + np.exp(-(X[i, i] - neg))))) + 1.5 * np.sum(sm * neg**2)
    assert loss_eager.item() == pytest.approx(expected / params.batch_size, rel=1e-4)
    # the fused step computes the same loss from the same initial state and negatives
    twin = GRU4Rec(n_items, params.model)
    twin.load_state_dict(initial)
    fused = Trainer(params, sessions, counts, CPU, seed=0, model=twin, step="fused")
    assert fused.fused is not None
    fused.model.train()
    loss_fused, _ = fused.train_step(inputs, targets, fused.model.init_hidden(4))
    assert loss_fused.item() == pytest.approx(loss_eager.item(), rel=1e-4)


@pytest.mark.parametrize("loss", ["cross-entropy", "bpr-max"])
def test_fused_and_eager_epochs_agree(loss):
    n_items = 30
    sessions = sessions_of(cyclic_lists(n_items, 40, seed=6))
    params = small(layers=(10, 6), batch_size=6, n_sample=8, momentum=0.3, logq=0.5, loss=loss,
                   dropout_p_embed=0.2, dropout_p_hidden=0.3)  # both paths draw the same dropout masks
    a = Trainer(params, sessions, counts_of(sessions, n_items), CPU, seed=2, step="fused")  # seeds the global RNG
    loss_a = a.train_epoch(1).loss
    b = Trainer(params, sessions, counts_of(sessions, n_items), CPU, seed=2, step="eager")
    assert a.fused is not None and b.fused is None
    assert loss_a == pytest.approx(b.train_epoch(1).loss, rel=1e-3)
    for k, v in a.model.state_dict().items():
        assert torch.allclose(v, b.model.state_dict()[k], rtol=1e-3, atol=1e-5), k


@pytest.mark.parametrize("step", ["fused", "eager"])
@pytest.mark.parametrize("mode", [dict(), dict(constrained_embedding=False, embedding=5)], ids=["shared", "separate"])
def test_train_step_updates_only_touched_item_rows(step, mode):
    n_items = 50
    sessions = sessions_of(cyclic_lists(n_items, 10, seed=2))
    params = small(batch_size=3, n_sample=4, momentum=0.3, **mode)
    trainer = Trainer(params, sessions, counts_of(sessions, n_items) + 1, CPU, seed=0, step=step)
    model = trainer.model
    model.train()
    drawn: list[torch.Tensor] = []
    original_next = trainer.sampler.next
    trainer.sampler.next = lambda: drawn.append(original_next()) or drawn[-1]  # remember the real draws
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inputs, targets = torch.tensor([1, 2, 3]), torch.tensor([2, 3, 4])
    for _ in range(2):  # a second step: momentum must not move rows the step does not touch
        snapshot = {k: v.clone() for k, v in model.state_dict().items()}
        trainer.train_step(inputs, targets, model.init_hidden(3))
        columns = set(targets.tolist()) | set(drawn[-1].tolist())

        def changed(name):
            diff = (model.state_dict()[name] != snapshot[name]).any(dim=1)
            return set(torch.nonzero(diff).flatten().tolist())

        if model.E is None:
            assert changed("Wy.weight") <= columns | set(inputs.tolist())
        else:
            assert changed("Wy.weight") <= columns
            assert changed("E.weight") <= set(inputs.tolist())
        assert changed("By.weight") <= columns
    assert not torch.equal(model.state_dict()["Wy.weight"], before["Wy.weight"])


# ---- learning, reproducibility, divergence ----
def train_trainer(params, sessions, n_items, seed, epochs):
    trainer = Trainer(params, sessions, counts_of(sessions, n_items), CPU, seed=seed)
    return trainer, [trainer.train_epoch(e) for e in range(1, epochs + 1)]


@pytest.mark.parametrize("loss,lr", [("cross-entropy", 0.1), ("bpr-max", 0.1)])
def test_tiny_run_learns_a_deterministic_pattern(loss, lr):
    n_items = 30
    train_sessions = sessions_of(cyclic_lists(n_items, 250, seed=0))
    test_sessions = sessions_of(cyclic_lists(n_items, 40, seed=99))
    params = small(layers=(32,), batch_size=16, n_sample=16, learning_rate=lr, momentum=0.1, loss=loss)
    trainer, history = train_trainer(params, train_sessions, n_items, seed=0, epochs=4)
    losses = [s.loss for s in history]
    assert losses[-1] < losses[0]
    trainer.model.eval()
    res = evaluate(ModelScorer(trainer.model), test_sessions, cutoffs=[1, 5])
    assert res.metrics["recall@5"] > 0.8, res.metrics  # chance is 5/30
    assert res.metrics["recall@1"] > 0.3


def test_seed_makes_runs_reproducible():
    n_items = 25
    sessions = sessions_of(cyclic_lists(n_items, 60, seed=4))
    params = small(layers=(10,), batch_size=6, dropout_p_hidden=0.2, dropout_p_embed=0.1, momentum=0.2)
    a, ha = train_trainer(params, sessions, n_items, seed=11, epochs=2)
    b, hb = train_trainer(params, sessions, n_items, seed=11, epochs=2)
    c, hc = train_trainer(params, sessions, n_items, seed=12, epochs=2)
    assert [s.loss for s in ha] == [s.loss for s in hb]
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
    assert [s.loss for s in ha] != [s.loss for s in hc]


def test_nan_loss_stops_with_user_error():
    n_items = 20
    sessions = sessions_of(cyclic_lists(n_items, 40, seed=5))
    params = small(learning_rate=1e38, momentum=0.9)
    trainer = Trainer(params, sessions, counts_of(sessions, n_items), CPU, seed=0)
    with pytest.raises(UserError, match="diverged.*learning_rate"):
        trainer.train_epoch(1)


# ---- train(): files, resume, best epoch ----
def write_tsv(path, lists, t0=1_000_000.0, prefix="i"):
    lines = ["SessionId\tItemId\tTime"]
    t = t0
    for s, items in enumerate(lists):
        for i in items:
            lines.append(f"{s}\t{prefix}{i}\t{t:.1f}")
            t += 7.0
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def files(tmp_path):
    train_path = write_tsv(tmp_path / "train.tsv", cyclic_lists(20, 80, seed=0))
    valid_path = write_tsv(tmp_path / "valid.tsv", cyclic_lists(20, 15, seed=1), t0=9_000_000.0)
    return train_path, valid_path


def weights(path):
    return torch.load(path / "model.pt", weights_only=True)


def interrupt_at(monkeypatch, epoch_to_fail: int):
    original = training_module.Trainer.train_epoch

    def train_epoch(self, epoch):
        if epoch == epoch_to_fail:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C during this epoch
        return original(self, epoch)

    monkeypatch.setattr(training_module.Trainer, "train_epoch", train_epoch)


@pytest.mark.parametrize("cache", ["one-row", "ten-rows"])
def test_resume_after_interruption(tmp_path, files, monkeypatch, cache):
    train_path, _ = files
    extra = dict(sample_cache_size=6 if cache == "one-row" else 60)
    params = small(layers=(12,), batch_size=5, n_sample=6, n_epochs=3, dropout_p_hidden=0.2, momentum=0.3, **extra)
    full = train(train_path, tmp_path / "full", params, device="cpu", seed=5)
    assert not (tmp_path / "full" / RESUME_FILE).exists()

    with monkeypatch.context() as mp:
        interrupt_at(mp, 2)
        with pytest.raises(KeyboardInterrupt):
            train(train_path, tmp_path / "part", params, device="cpu", seed=5)
    meta = json.loads((tmp_path / "part" / METADATA_FILE).read_text())
    assert meta["training"]["complete"] is False
    assert [e["epoch"] for e in meta["training"]["epochs"]] == [1]
    assert load_resume_state(tmp_path / "part")["epoch"] == 1  # loads with weights_only=True

    resumed = train(train_path, tmp_path / "part", params, device="cpu", seed=5, resume=True)
    assert [s.epoch for s in resumed] == [1, 2, 3]
    assert resumed[0].loss == full[0].loss
    assert not (tmp_path / "part" / RESUME_FILE).exists()
    meta = json.loads((tmp_path / "part" / METADATA_FILE).read_text())
    assert meta["training"]["complete"] is True and len(meta["training"]["epochs"]) == 3
    # resuming gives exactly the uninterrupted run (weights, optimiser, dropout RNG and the stream of
    # negatives, including the position inside the pre-drawn buffer, are all restored)
    assert [s.loss for s in resumed] == [s.loss for s in full]
    w_full, w_part = weights(tmp_path / "full"), weights(tmp_path / "part")
    for k in w_full:
        assert torch.equal(w_full[k], w_part[k]), k


def test_resume_refuses_mismatches(tmp_path, files, monkeypatch):
    train_path, valid_path = files
    params = small(n_epochs=2)
    with pytest.raises(UserError, match="not found"):
        train(train_path, tmp_path / "none", params, device="cpu", resume=True)
    train(train_path, tmp_path / "done", params, device="cpu")
    with pytest.raises(UserError, match="nothing to resume"):
        train(train_path, tmp_path / "done", params, device="cpu", resume=True)
    with monkeypatch.context() as mp:
        interrupt_at(mp, 2)
        with pytest.raises(KeyboardInterrupt):
            train(train_path, tmp_path / "part", params, device="cpu")
    with pytest.raises(UserError, match="other parameters"):
        train(train_path, tmp_path / "part", params.replace(batch_size=3), device="cpu", resume=True)
    other = write_tsv(tmp_path / "other.tsv", cyclic_lists(20, 80, seed=0), prefix="j")
    with pytest.raises(UserError, match="another training file"):
        train(other, tmp_path / "part", params, device="cpu", resume=True)


def noisy_lists(n_items: int, n_sessions: int, seed: int) -> list[list[int]]:
    """Random clicks: nothing to learn, so extra epochs overfit and validation gets worse."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n_items, size=int(rng.integers(2, 6))).tolist() for _ in range(n_sessions)]


def test_best_epoch_kept_with_valid(tmp_path):
    train_path = write_tsv(tmp_path / "train.tsv", noisy_lists(20, 80, seed=0))
    valid_path = write_tsv(tmp_path / "valid.tsv", noisy_lists(20, 30, seed=1), t0=9_000_000.0)
    params = small(layers=(16,), batch_size=8, n_sample=8, n_epochs=4, learning_rate=0.3, momentum=0.3)
    history = train(train_path, tmp_path / "m", params, valid_path=valid_path, device="cpu", seed=1, metric="mrr@20")
    values = [s.valid["mrr@20"] for s in history]
    meta = json.loads((tmp_path / "m" / METADATA_FILE).read_text())["training"]
    best = int(np.argmax(values)) + 1
    assert meta["best_epoch"] == best
    assert meta["best_mrr@20"] == pytest.approx(max(values))
    assert [e["valid"]["mrr@20"] for e in meta["epochs"]] == pytest.approx(values)
    assert best < params.n_epochs, f"setup no longer overfits ({values}): the test would not tell best from last"
    ck = load_checkpoint(tmp_path / "m")
    sessions, _ = load_eval_data(valid_path, ck.item_map)
    res = evaluate(ModelScorer(ck.model), sessions, cutoffs=[20])
    assert res.metrics["mrr@20"] == pytest.approx(max(values), abs=1e-9)  # the saved weights ARE the best epoch's
    assert res.metrics["mrr@20"] != pytest.approx(values[-1], abs=1e-9)


def test_train_rejects_bad_metric_and_data(tmp_path, files):
    train_path, valid_path = files
    with pytest.raises(UserError, match="metric"):
        train(train_path, tmp_path / "m", small(), valid_path=valid_path, device="cpu", metric="auc")
    singles = write_tsv(tmp_path / "singles.tsv", [[1], [2], [3]])
    with pytest.raises(UserError, match="nothing to learn"):
        train(singles, tmp_path / "m", small(), device="cpu")
    assert not (tmp_path / "m").exists()


def test_diverging_train_writes_no_model(tmp_path, files):
    train_path, _ = files
    with pytest.raises(UserError, match="diverged"):
        train(train_path, tmp_path / "m", small(learning_rate=1e38, momentum=0.9), device="cpu")
    assert not (tmp_path / "m").exists()
