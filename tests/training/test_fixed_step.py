"""The fixed-shape training step (the one CUDA graphs capture), run on the CPU: its epoch schedule
against the reference batching, and whole epochs against the eager step for every loss it takes,
both embedding modes it supports and with and without dropout, through the masked tail and the
session resets (reference section 2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gru4rec.data.sessions import Sessions
from gru4rec.foundation.errors import UserError
from gru4rec.training.batching import session_parallel_steps
from gru4rec.training.params import HyperParams
from gru4rec.training.sampling import NegativeSampler
from gru4rec.training.schedule import EpochSchedule
from gru4rec.training.trainer import Trainer
from session_factories import cyclic, sessions_of

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def by_position(lengths) -> Sessions:
    """Item at position p is p: an input tells which event it is."""
    offsets = np.r_[0, np.cumsum(lengths)]
    return sessions_of([list(range(offsets[i], offsets[i + 1])) for i in range(len(lengths))])


# ---- the schedule ----
@pytest.mark.parametrize("seed", range(6))
def test_schedule_is_the_reference_batching_laid_out_in_slots(seed):
    rng = np.random.default_rng(seed)
    for _ in range(40):
        lengths = rng.integers(1, 8, size=int(rng.integers(1, 40)))
        batch, min_rows = int(rng.integers(1, 12)), int(rng.integers(1, 3))
        sessions = by_position(lengths)
        schedule = EpochSchedule.build(sessions, batch, min_rows)
        slots = np.arange(min(batch, sessions.n_sessions))  # which slot each row of the reference occupies
        t = 0
        for i, step in enumerate(session_parallel_steps(sessions, batch)):
            if step.keep is not None:
                slots = slots[step.keep]
            if len(step.positions) < min_rows:
                break
            valid = schedule.valid[t].numpy()
            assert np.array_equal(np.flatnonzero(valid), slots)  # rows keep their slot; finished slots stay, masked
            assert np.array_equal(schedule.positions[t].numpy()[valid], step.positions)
            assert schedule.rows[t] == len(step.positions)
            resets = set(np.flatnonzero(schedule.reset[t].numpy()).tolist())
            if i > 0:  # (the first step starts from a zero state anyway)
                assert resets == set() if step.reset is None else resets == set(slots[step.reset].tolist())
            t += 1
        assert t == schedule.n_steps


def test_schedule_size_and_dtypes():
    sessions = by_position([3, 1, 5, 2])
    schedule = EpochSchedule.build(sessions, batch_size=8)
    assert schedule.n_slots == 4  # min(batch, sessions) slots, as the reference batching opens
    assert schedule.positions.dtype == torch.int32 and schedule.valid.dtype == torch.bool
    assert int(schedule.rows.sum()) == sessions.n_events - sessions.n_sessions  # every event with a successor once


def test_sampler_take_continues_the_stream_of_next():
    counts = torch.arange(1, 30, dtype=torch.float64)
    a = NegativeSampler(counts, 5, 0.5, cache_size=5 * 7, generator=torch.Generator().manual_seed(3))
    b = NegativeSampler(counts, 5, 0.5, cache_size=5 * 7, generator=torch.Generator().manual_seed(3))
    want = torch.stack([a.next() for _ in range(17)])  # 17 rows: two refills of a 7-row buffer
    got = torch.cat([b.take(4), b.take(9), b.take(4)])
    assert torch.equal(got, want)
    assert torch.equal(a.next(), b.take(1)[0])


# ---- whole epochs against the eager step ----
def params_for(loss: str, mode: dict, dropout: tuple[float, float]) -> HyperParams:
    return HyperParams(layers=(12, 8), batch_size=7, n_sample=9, learning_rate=0.05, momentum=0.3, n_epochs=1,
                       dropout_p_embed=dropout[0], dropout_p_hidden=dropout[1], logq=0.5, loss=loss,
                       elu_param=0.5, bpreg=1.5, sample_cache_size=90, **mode)


@pytest.mark.parametrize("loss", ["cross-entropy", "bpr-max"])
@pytest.mark.parametrize("mode", [dict(), dict(constrained_embedding=False, embedding=7)], ids=["shared", "separate"])
@pytest.mark.parametrize("dropout", [(0.0, 0.0), (0.2, 0.3)], ids=["no-dropout", "dropout"])
def test_fixed_step_trains_the_eager_model(loss, mode, dropout):
    """Two epochs (batch 7 over 60 sessions: resets, one-click sessions, a shrinking tail), same
    weights, optimiser state and losses as the eager step to float rounding."""
    n_items = 40
    sessions = cyclic(n_items, 60, seed=1)
    counts = np.bincount(sessions.items, minlength=n_items) + 1
    params = params_for(loss, mode, dropout)
    runs = {}
    for step in ("fixed", "eager"):
        trainer = Trainer(params, sessions, counts, CPU, seed=3, step=step, self_check=False)
        losses = [trainer.train_epoch(e).loss for e in (1, 2)]
        runs[step] = (trainer, losses)
    (fixed, fixed_losses), (eager, eager_losses) = runs["fixed"], runs["eager"]
    assert fixed.kind == "fixed" and eager.kind == "eager"
    assert fixed.fixed.schedule.rows.min() < params.batch_size  # the tail was masked, not dropped
    assert fixed_losses == pytest.approx(eager_losses, rel=1e-5)
    for (name, v), w in zip(fixed.model.state_dict().items(), eager.model.state_dict().values()):
        assert torch.allclose(v, w, rtol=1e-4, atol=2e-5), name
    for p, q in zip(fixed.model.parameters(), eager.model.parameters()):
        for key, value in fixed.optimizers[0].state[p].items():
            assert torch.allclose(value, eager.optimizers[0].state[q][key], rtol=1e-4, atol=2e-5), key


def test_finished_slots_and_their_items_stay_untouched():
    """In the tail a finished slot's (stale) input and target must not be updated: with momentum even a
    zero gradient would move a touched row. Items are positions, so each item is one event."""
    sessions = by_position([2, 9, 2, 2, 2])
    n_items = sessions.n_events
    params = HyperParams(layers=(6,), batch_size=3, n_sample=2, learning_rate=0.1, momentum=0.5, n_epochs=1,
                         sample_cache_size=40)
    trainer = Trainer(params, sessions, np.ones(n_items), CPU, seed=0, step="fixed", self_check=False)
    before = trainer.model.Wy.weight.detach().clone()
    drawn = []
    take = trainer.sampler.take
    trainer.sampler.take = lambda n: drawn.append(take(n)) or drawn[-1]
    trainer.train_epoch(1)
    schedule = trainer.fixed.schedule
    assert (schedule.rows < 3).any()  # slots finished while the long session ran on
    fed = {int(p) for p, v in zip(schedule.positions.flatten(), schedule.valid.flatten()) if v}
    touched = fed | {p + 1 for p in fed} | set(torch.cat(drawn).flatten().tolist())
    changed = set(torch.nonzero((trainer.model.Wy.weight != before).any(dim=1)).flatten().tolist())
    assert changed and changed <= touched


def test_slots_start_each_session_from_a_zero_state():
    sessions = by_position([4, 2, 3, 2, 5])
    params = HyperParams(layers=(5,), batch_size=2, n_sample=3, n_epochs=1, sample_cache_size=30)
    trainer = Trainer(params, sessions, np.ones(sessions.n_events), CPU, seed=0, step="fixed", self_check=False)
    run = trainer._fixed_runner()
    run.begin()
    for t in range(run.n_steps):
        run.advance()
        reset = run.schedule.reset[t]
        assert torch.count_nonzero(run.step.h0[0][reset]) == 0  # a new session's incoming state is zero
        live = run.schedule.valid[t] & ~reset
        if live.any():
            assert torch.count_nonzero(run.step.h0[0][live]) > 0  # a running session's is carried over


def test_step_choice():
    sessions = cyclic(20, 10, seed=0)
    counts = np.ones(20)
    base = dict(layers=(6,), batch_size=3, n_sample=4, n_epochs=1, sample_cache_size=40)
    assert Trainer(HyperParams(**base), sessions, counts, CPU, step="auto").kind == "fused"  # a CPU's fastest
    assert Trainer(HyperParams(**base), sessions, counts, CPU, step="fixed").kind == "fixed"
    assert Trainer(HyperParams(**base, loss="top1-max"), sessions, counts, CPU, step="auto").kind == "fused"
    with pytest.raises(UserError, match="cross-entropy or bpr-max"):
        Trainer(HyperParams(**base, loss="top1-max"), sessions, counts, CPU, step="fixed")
    none_mode = HyperParams(**base, constrained_embedding=False, embedding=0)
    assert Trainer(none_mode, sessions, counts, CPU, step="auto").kind == "eager"
    with pytest.raises(UserError):
        Trainer(none_mode, sessions, counts, CPU, step="fixed")
