"""The training engine as the reference does it: session-parallel mini-batches, sampled negatives,
one update per event, no BPTT. A Trainer runs epochs on one device; gru4rec.training.run drives it
through a whole run (data, validation, checkpoints, resume).

Three implementations of the same step, chosen by `step` (auto picks the fastest that applies):
  eager  autograd (gru4rec.training.eager): every setting; the reference for correctness.
  fused  a hand-written forward/backward (gru4rec.training.fused) on mini-batches of their natural
         size, with compiled kernels on a CPU: the CPU default (shared/separate embedding, Adagrad).
  fixed  the same arithmetic on fixed shapes, fed from a schedule kept on the device
         (gru4rec.training.fixed_step / fixed_epoch) and, on CUDA, captured as one CUDA graph: the
         GPU default where it applies (also cross-entropy or BPR-max, one process).
A fast step checks itself against the eager step on its first mini-batches (gru4rec.training.selfcheck)
and hands over to the eager step, with one warning, if it disagrees or cannot be captured.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gru4rec.data.sessions import Sessions
from gru4rec.foundation.errors import UserError
from gru4rec.foundation.logs import progress
from gru4rec.foundation.memory import advise_huge_pages
from gru4rec.model.network import GRU4Rec, Hidden
from gru4rec.training import distributed as ddp
from gru4rec.training import fixed_step, selfcheck
from gru4rec.training.batching import count_steps, session_parallel_steps
from gru4rec.training.eager import Batch, eager_step
from gru4rec.training.fixed_epoch import FixedEpoch
from gru4rec.training.fused import FusedStep, supports
from gru4rec.training.losses import make_loss
from gru4rec.training.optim import make_optimizer, sparse_parameters
from gru4rec.training.params import HyperParams
from gru4rec.training.sampling import NegativeSampler
from gru4rec.training.schedule import EpochSchedule

log = logging.getLogger(__name__)

STEPS = ("auto", "fused", "eager", "fixed")  # "fixed" is for tests and benchmarks; the CLI offers the rest
WARMUP_STEPS = 3  # uncaptured steps before a CUDA graph is captured (as PyTorch asks)


class TrainingDiverged(UserError):
    """The loss became NaN or infinite during an epoch (the caller can say what its output still holds)."""


@dataclass
class EpochStats:
    epoch: int
    loss: float  # mean loss per event (row) of the epoch
    seconds: float
    events: int
    events_per_s: float
    valid: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class _Tally:
    """An epoch in progress: summed step losses (on the device), steps, events, progress bar."""

    epoch: int
    bar: Any
    loss_sum: Tensor
    steps: int = 0
    events: int = 0
    start: float = field(default_factory=time.perf_counter)


class Trainer:
    """Holds the model, optimiser and sampler for one training run on one device."""

    def __init__(
        self,
        params: HyperParams,
        sessions: Sessions,
        item_counts: np.ndarray,
        device: torch.device,
        seed: int = 42,
        model: GRU4Rec | None = None,
        step: str = "auto",
        world_size: int = 1,
        is_main: bool = True,
        threads: int | None = None,
        self_check: bool = True,
    ) -> None:
        self.settings = settings = params.training
        # A GRU4Rec step is many small ops: on a CPU one intra-op thread is fastest (measured on
        # 2 cores: 24k vs 20k events/s) and does not collapse when other processes share the cores.
        self.threads = threads if threads is not None else (1 if device.type == "cpu" else None)
        self.is_main = is_main
        self.sessions = sessions
        self.device = device
        torch.manual_seed(seed)
        if device.type == "cpu":
            torch.set_flush_denormal(True)  # BPR-max on CPU is up to 15x slower with denormals
        self.model = (model or GRU4Rec(len(item_counts), params.model)).to(device)
        self.optimizers = make_optimizer(self.model, settings.optimizer, settings.learning_rate, settings.momentum)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        counts = torch.as_tensor(item_counts, dtype=torch.float64, device=device)
        self.sampler = NegativeSampler(counts, settings.n_sample, settings.sample_alpha, settings.sample_cache_size, self.generator)
        # logQ of the columns: training count for in-batch targets, count^alpha for extra samples
        self.log_counts = torch.log(counts.clamp_min(1)).float()
        self.loss_fn = make_loss(settings.loss, logq=settings.logq, elu_param=settings.elu_param, bpreg=settings.bpreg)
        self.items = torch.from_numpy(sessions.items).to(device)
        self.kind = self._step_kind(step, world_size)
        self.fused = FusedStep(self.model, self.optimizers[0], settings, self.loss_fn) if self.kind == "fused" else None
        self.fixed: FixedEpoch | None = None  # built at the first epoch (it needs the schedule)
        # steps still to check against the eager step (distributed runs skip it: ranks must agree)
        self.checks_left = selfcheck.CHECKED_STEPS if self_check and self.kind != "eager" and world_size == 1 else 0
        self.reducer = None
        self._total_steps: int | None = None  # distributed: updates per epoch, agreed by all ranks
        self._use_huge_pages()
        if world_size > 1:
            if settings.optimizer != "adagrad":
                raise UserError("distributed training supports optimizer=adagrad (the reference optimiser) only")
            self.reducer = ddp.GradientReducer(self.model, world_size)

    def _step_kind(self, step: str, world_size: int) -> str:
        if step not in STEPS:
            raise UserError(f"--step {step!r}: expected auto, fused or eager")
        if step == "eager":
            return "eager"
        if not (len(self.optimizers) == 1 and supports(self.model, self.optimizers[0])):
            if step != "auto":
                raise UserError(
                    "--step fused supports the shared and separate embedding modes with the adagrad optimizer; "
                    "use --step auto or eager"
                )
            return "eager"
        fixable = world_size == 1 and fixed_step.supports(self.model, self.optimizers[0], self.settings)
        if step == "fixed" and not fixable:
            raise UserError("the fixed-shape step needs loss cross-entropy or bpr-max and a single process")
        return "fixed" if step == "fixed" or (fixable and self.device.type == "cuda") else "fused"

    # ---- one mini-batch (variable size: the eager and fused steps) ----
    def batch(self, inputs: Tensor, targets: Tensor) -> Batch:
        """The step's columns: the in-batch targets, then the shared negatives, and their logQ."""
        negatives = self.sampler.next()
        log_q = None
        if self.settings.loss == "cross-entropy" and self.settings.logq > 0:
            log_q = self.log_counts.index_select(0, torch.cat([targets, negatives]))
            log_q[len(targets):] *= self.settings.sample_alpha
        return Batch(inputs, targets, negatives, log_q)

    def train_step(self, inputs: Tensor, targets: Tensor, hidden: Hidden) -> tuple[Tensor, Hidden]:
        """One update on one mini-batch; returns the (detached) loss and the new hidden state."""
        batch = self.batch(inputs, targets)
        if self.fused is None:
            return self._eager(batch, hidden)
        if self.checks_left > 0:
            return self._checked_fused(batch, hidden)
        return self._fused(batch, hidden)

    def _eager(self, batch: Batch, hidden: Hidden, masks: list[Tensor | None] | None = None) -> tuple[Tensor, Hidden]:
        return eager_step(self.model, self.optimizers, self.loss_fn, self.settings.batch_size, batch, hidden, masks,
                          self.reducer)

    def _fused(self, batch: Batch, hidden: Hidden) -> tuple[Tensor, Hidden]:
        assert self.fused is not None
        if self.reducer is None:
            return self.fused(batch.inputs, batch.columns, hidden, batch.log_q)
        loss, hidden, grads = self.fused.gradients(batch.inputs, batch.columns, hidden, batch.log_q)
        self.optimizers[0].apply(self.reducer.reduce(grads))
        return loss, hidden

    def _checked_fused(self, batch: Batch, hidden: Hidden) -> tuple[Tensor, Hidden]:
        def fast():
            loss, new = self._fused(batch, hidden)
            return loss, new, self.fused.masks

        outcome = selfcheck.check_step(self.model, self.optimizers[0], torch.cat([batch.inputs, batch.columns]),
                                       fast, lambda masks: self._eager(batch, hidden, masks))
        self._after_check(outcome.failure)
        return outcome.loss, outcome.hidden

    def _after_check(self, failure: str | None) -> None:
        self.checks_left -= 1
        if failure is not None:
            self._give_up(f"it disagrees with the eager step on one of its first mini-batches ({failure})")

    def _give_up(self, why: str) -> None:
        log.warning("the %s training step cannot be trusted here: %s; training continues with the eager step",
                    self.kind, why)
        self.kind, self.fused, self.fixed, self.checks_left = "eager", None, None, 0

    @property
    def _min_rows(self) -> int:
        # a lone slot with no extra negatives has nothing to rank against
        return max(1, 2 - self.settings.n_sample)

    # ---- epochs ----
    def train_epoch(self, epoch: int) -> EpochStats:
        previous = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            self.model.train()
            bar = progress(total=self.sessions.n_events - self.sessions.n_sessions, desc=f"epoch {epoch}", unit="ev",
                           disable=True if not self.is_main else None)
            tally = _Tally(epoch, bar, torch.zeros((), device=self.device))
            if self.kind == "fixed":
                self._fixed_epoch(tally)
            else:
                self._variable_epoch(tally)
            bar.update(tally.events - bar.n)
            bar.close()
            return self._epoch_stats(tally)
        finally:
            torch.set_num_threads(previous)

    def _variable_epoch(self, tally: _Tally, skip: int = 0, hidden: Hidden | None = None) -> None:
        """Mini-batches of their natural size, from step `skip` on (with `hidden`: the state it left)."""
        if self.reducer is not None and self._total_steps is None:
            # every process must join as many updates as the longest shard has mini-batches
            local = count_steps(self.sessions, self.settings.batch_size, self._min_rows)
            self._total_steps = ddp.all_reduce_max(local, self.device)
        if hidden is None:
            hidden = self.model.init_hidden(min(self.settings.batch_size, self.sessions.n_sessions), self.device)
        for step in itertools.islice(session_parallel_steps(self.sessions, self.settings.batch_size), skip, None):
            if step.keep is not None:
                keep = torch.from_numpy(step.keep).to(self.device)
                hidden = [h.index_select(0, keep) for h in hidden]
            if step.reset is not None:
                reset = torch.from_numpy(step.reset).to(self.device)
                for h in hidden:
                    h.index_fill_(0, reset, 0.0)
            if len(step.positions) < self._min_rows:
                continue
            pos = torch.from_numpy(step.positions).to(self.device)
            loss, hidden = self.train_step(self.items[pos], self.items[pos + 1], hidden)
            tally.loss_sum += loss
            self._tick(tally, len(pos))

    def _fixed_epoch(self, tally: _Tally) -> None:
        """The fixed-shape step over the device schedule: checked first, then (on CUDA) captured and
        replayed; hands the rest of the epoch to the eager step if a check or the capture fails."""
        run = self._fixed_runner()
        run.begin()
        for t in range(run.n_steps):
            if run.wants_capture(WARMUP_STEPS) and not self._capture(run):
                return self._hand_over(tally, run, t)
            if self.checks_left > 0:
                passed = self._checked_fixed(run)
            else:
                run.advance()
                passed = True
            self._tick(tally, int(run.schedule.rows[t]), run.loss_sum)
            if not passed:
                return self._hand_over(tally, run, t + 1)
        tally.loss_sum += run.loss_sum

    def _hand_over(self, tally: _Tally, run: FixedEpoch, t: int) -> None:
        """Continue the epoch at step t with the eager step, from the state the fixed step left."""
        tally.loss_sum += run.loss_sum
        run.rewind_negatives()
        self._variable_epoch(tally, skip=t, hidden=run.live_hidden(t - 1))

    def _fixed_runner(self) -> FixedEpoch:
        if self.fixed is None:
            schedule = EpochSchedule.build(self.sessions, self.settings.batch_size, self._min_rows)
            step = fixed_step.FixedStep(self.model, self.optimizers[0], self.settings, self.loss_fn, self.log_counts,
                                        schedule.n_slots, compact_masks=self.device.type != "cuda")
            self.fixed = FixedEpoch(step, schedule, self.items, self.sampler)
            if self.fixed.capturable and self.checks_left > 0:
                self.checks_left += WARMUP_STEPS  # the warm-up steps and the graph's first replays are checked
        return self.fixed

    def _capture(self, run: FixedEpoch) -> bool:
        try:
            run.capture()
        except Exception as exc:  # noqa: BLE001 - any capture failure leaves the eager step to do the work
            self._give_up(f"capturing it as a CUDA graph failed ({type(exc).__name__}: {exc})")
            return False
        return True

    def _checked_fixed(self, run: FixedEpoch) -> bool:
        """One fixed-shape step against the eager step on the live rows; False if it failed."""
        run.prepare(one=True)
        batch = run.peek()
        live_batch, rows = batch.live()
        before = run.loss_sum.clone()
        keep = (batch.valid & ~run.schedule.reset[run.host_t]).unsqueeze(1)
        h0 = [(h * keep).index_select(0, rows) for h in run.step.hidden]

        def fast():
            run.advance()
            return run.loss_sum - before, run.step.hidden, run.step.masks

        def eager(masks):
            live_masks = None if masks is None else [m if m is None else m.index_select(0, rows) for m in masks]
            loss, new = self._eager(live_batch, h0, live_masks)
            return loss, [torch.zeros_like(h).index_copy_(0, rows, n) for h, n in zip(run.step.hidden, new)]

        ids = torch.cat([live_batch.inputs, live_batch.columns])
        outcome = selfcheck.check_step(self.model, self.optimizers[0], ids, fast, eager, rows)
        run.loss_sum.copy_(before + outcome.loss)
        for h, new in zip(run.step.hidden, outcome.hidden):
            h.copy_(new)
        self._after_check(outcome.failure)
        return outcome.failure is None

    def _tick(self, tally: _Tally, rows: int, running: Tensor | None = None) -> None:
        tally.steps += 1
        tally.events += rows
        if tally.steps % 256 == 0:
            loss_sum = tally.loss_sum + running if running is not None else tally.loss_sum
            self._check_finite(loss_sum, tally.epoch, tally.events)
            mean = loss_sum.item() * self.settings.batch_size / max(tally.events, 1)
            tally.bar.set_postfix(loss=f"{mean:.4f}", refresh=False)
            tally.bar.update(tally.events - tally.bar.n)

    def _epoch_stats(self, tally: _Tally) -> EpochStats:
        total_loss, done, n_steps = tally.loss_sum.item(), tally.events, tally.steps
        if self.reducer is not None:
            for _ in range(self._total_steps - n_steps):
                self.optimizers[0].apply(self.reducer.reduce(self.reducer.empty()))
            total_loss = ddp.all_reduce_sum(total_loss, self.device)
            done = int(ddp.all_reduce_sum(done, self.device))
        self._check_finite(torch.tensor(total_loss), tally.epoch, done)
        seconds = time.perf_counter() - tally.start
        # each step's loss is its rows' summed loss over the batch size (the reference's gradient
        # scale); what is reported is the mean per event, whatever the rows of the last steps
        mean_loss = total_loss * self.settings.batch_size / max(done, 1)
        return EpochStats(tally.epoch, mean_loss, seconds, done, done / max(seconds, 1e-9))

    @staticmethod
    def _check_finite(loss_sum: Tensor, epoch: int, events: int) -> None:
        value = loss_sum.item()
        if not math.isfinite(value):
            raise TrainingDiverged(
                f"training diverged in epoch {epoch}: the loss became {value} after {events} events; "
                "lower learning_rate (or momentum) and train again"
            )

    def optimizer_state(self) -> list[dict[str, Any]]:
        return [opt.state_dict() for opt in self.optimizers]

    def load_optimizer_state(self, states: list[dict[str, Any]]) -> None:
        for opt, state in zip(self.optimizers, states):
            opt.load_state_dict(state)

    def _use_huge_pages(self) -> None:
        """The item tables and the fused step's per-item slots on 2 MB pages (CPU): every step updates
        random rows of them (see foundation.memory.advise_huge_pages; the optimiser places its own state)."""
        if self.device.type != "cpu":
            return
        for table in sparse_parameters(self.model):
            advise_huge_pages(table.data)
        slot = getattr(self.fused.ops, "slot", None) if self.fused is not None else None
        if slot is not None:
            advise_huge_pages(slot)
