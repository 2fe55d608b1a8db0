"""The training engine as the reference does it: session-parallel mini-batches, sampled negatives,
one update per event, no BPTT. A Trainer runs epochs on one device; gru4rec.training.run drives it
through a whole run (data, validation, checkpoints, resume).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gru4rec.data.sessions import Sessions
from gru4rec.foundation.errors import UserError
from gru4rec.foundation.logs import progress
from gru4rec.model.network import GRU4Rec, Hidden
from gru4rec.training import distributed as ddp
from gru4rec.training.batching import count_steps, session_parallel_steps
from gru4rec.training.fused import FusedStep, supports
from gru4rec.training.losses import make_loss
from gru4rec.training.optim import Gradients, make_optimizer
from gru4rec.training.params import HyperParams
from gru4rec.training.sampling import NegativeSampler

log = logging.getLogger(__name__)


@dataclass
class EpochStats:
    epoch: int
    loss: float
    seconds: float
    events: int
    events_per_s: float
    valid: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


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
        fusable = len(self.optimizers) == 1 and supports(self.model, self.optimizers[0])
        if step == "fused" and not fusable:
            raise UserError(
                "--step fused supports the shared and separate embedding modes with the adagrad optimizer; "
                "use --step auto or eager"
            )
        if step not in ("auto", "fused", "eager"):
            raise UserError(f"--step {step!r}: expected auto, fused or eager")
        self.fused = (
            FusedStep(self.model, self.optimizers[0], settings, self.loss_fn)
            if fusable and step != "eager" else None
        )
        self.reducer = None
        self._total_steps: int | None = None  # distributed: updates per epoch, agreed by all ranks
        if world_size > 1:
            if settings.optimizer != "adagrad":
                raise UserError("distributed training supports optimizer=adagrad (the reference optimiser) only")
            self.reducer = ddp.GradientReducer(self.model, world_size)

    def train_step(self, inputs: Tensor, targets: Tensor, hidden: Hidden) -> tuple[Tensor, Hidden]:
        """One update on one mini-batch; returns the (detached) loss and the new hidden state."""
        sample = self.sampler.next()
        columns = torch.cat([targets, sample])
        log_q = None
        if self.settings.loss == "cross-entropy" and self.settings.logq > 0:
            log_q = torch.cat([self.log_counts[targets], self.settings.sample_alpha * self.log_counts[sample]])
        if self.fused is not None:
            loss, hidden, grads = self.fused.gradients(inputs, columns, hidden, log_q)
            if self.reducer is not None:
                grads = self.reducer.reduce(grads)
            self.optimizers[0].apply(grads)
            return loss, hidden
        hidden = self.model.step(inputs, hidden)
        O = self.model.score(hidden, columns)
        loss = self.loss_fn(O, log_q) / self.settings.batch_size
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.reducer is not None:
            self.optimizers[0].apply(self.reducer.reduce(Gradients.from_autograd(self.model.parameters())))
        else:
            for opt in self.optimizers:
                opt.step()
        return loss.detach(), [h.detach() for h in hidden]

    @property
    def _min_rows(self) -> int:
        # a lone slot with no extra negatives has nothing to rank against
        return max(1, 2 - self.settings.n_sample)

    def train_epoch(self, epoch: int) -> EpochStats:
        previous = torch.get_num_threads()
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        try:
            return self._train_epoch(epoch)
        finally:
            torch.set_num_threads(previous)

    def _train_epoch(self, epoch: int) -> EpochStats:
        self.model.train()
        n_events = self.sessions.n_events - self.sessions.n_sessions
        hidden = self.model.init_hidden(min(self.settings.batch_size, self.sessions.n_sessions), self.device)
        loss_sum = torch.zeros((), device=self.device)
        n_steps = done = 0
        start = time.perf_counter()
        if self.reducer is not None and self._total_steps is None:
            # every process must join as many updates as the longest shard has mini-batches
            local = count_steps(self.sessions, self.settings.batch_size, self._min_rows)
            self._total_steps = ddp.all_reduce_max(local, self.device)
        bar = progress(total=n_events, desc=f"epoch {epoch}", unit="ev", disable=True if not self.is_main else None)
        for step in session_parallel_steps(self.sessions, self.settings.batch_size):
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
            loss_sum += loss
            n_steps += 1
            done += len(pos)
            if n_steps % 256 == 0:
                self._check_finite(loss_sum, epoch, done)
                bar.set_postfix(loss=f"{loss_sum.item() / n_steps:.4f}", refresh=False)
                bar.update(done - bar.n)
        bar.update(done - bar.n)
        bar.close()
        total_loss = loss_sum.item()
        if self.reducer is not None:
            for _ in range(self._total_steps - n_steps):
                self.optimizers[0].apply(self.reducer.reduce(self.reducer.empty()))
            total_loss = ddp.all_reduce_sum(total_loss, self.device)
            done = int(ddp.all_reduce_sum(done, self.device))
            n_steps = int(ddp.all_reduce_sum(n_steps, self.device))
        self._check_finite(torch.tensor(total_loss), epoch, done)
        seconds = time.perf_counter() - start
        mean_loss = total_loss / max(n_steps, 1)
        return EpochStats(epoch, mean_loss, seconds, done, done / max(seconds, 1e-9))

    @staticmethod
    def _check_finite(loss_sum: Tensor, epoch: int, events: int) -> None:
        value = loss_sum.item()
        if not math.isfinite(value):
            raise UserError(
                f"training diverged: the loss became {value} in epoch {epoch} after {events} events; "
                "lower learning_rate (or momentum) and train again"
            )

    def optimizer_state(self) -> list[dict[str, Any]]:
        return [opt.state_dict() for opt in self.optimizers]

    def load_optimizer_state(self, states: list[dict[str, Any]]) -> None:
        for opt, state in zip(self.optimizers, states):
            opt.load_state_dict(state)
