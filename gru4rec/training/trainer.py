"""Training GRU4Rec as the reference does: session-parallel mini-batches, sampled negatives,
one update per event, no BPTT; plus what a production user needs (validation, best epoch, resume).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gru4rec.training import distributed as ddp
from gru4rec.training.batching import count_steps, session_parallel_steps
from gru4rec.model.checkpoint import (
    OPTIMIZER_FILE,
    load_checkpoint,
    load_optimizer_state,
    load_resume_state,
    model_config,
    read_metadata,
    save_checkpoint,
    training_settings,
)
from gru4rec.training.params import HyperParams
from gru4rec.training.settings import TrainingSettings
from gru4rec.data.sessions import ItemMap, Sessions, load_eval_data, load_training_data
from gru4rec.foundation.errors import UserError
from gru4rec.evaluation.protocol import DEFAULT_CUTOFFS, ModelScorer, evaluate
from gru4rec.training.fused import FusedStep, supports
from gru4rec.foundation.logs import progress
from gru4rec.training.losses import make_loss
from gru4rec.model.network import GRU4Rec, Hidden
from gru4rec.training.optim import Gradients, make_optimizer
from gru4rec.training.sampling import NegativeSampler
from gru4rec.training.warm_start import check_compatible, warm_start_model, warm_start_optimizer_state

log = logging.getLogger(__name__)


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA when present; `cuda[:n]` fails clearly when it is not."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r}: expected auto, cpu or cuda[:n]") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: CUDA is not available on this machine (use cpu or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif device.type != "cpu":
        raise UserError(f"--device {name!r}: expected auto, cpu or cuda[:n]")
    return device


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


def train(
    train_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    params: HyperParams,
    *,
    valid_path: str | os.PathLike[str] | None = None,
    device: str = "auto",
    seed: int = 42,
    metric: str = "mrr@20",
    resume: bool = False,
    eval_batch_size: int = 512,
    step: str = "auto",
    distributed: bool = False,
    init_from: str | os.PathLike[str] | None = None,
    keep_vanished_items: bool = True,
    threads: int | None = None,
) -> list[EpochStats]:
    """Train and write MODEL_DIR after every epoch (the best epoch's weights when validating).

    With `distributed`, this process is one rank of a torchrun job: it trains on its shard of the
    sessions, and rank 0 validates and writes MODEL_DIR.
    """
    dev = resolve_device(device)
    ctx = ddp.init_from_env(dev.type) if distributed else None
    if ctx is not None and dev.type == "cuda":
        dev = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(dev)
    try:
        return _train(
            train_path, Path(out_dir), params, valid_path, dev, seed, metric, resume, eval_batch_size, step, ctx,
            init_from, keep_vanished_items, threads,
        )
    finally:
        if ctx is not None:
            ddp.shutdown()


def _train(
    train_path, out_dir: Path, params: HyperParams, valid_path, dev: torch.device, seed: int, metric: str,
    resume: bool, eval_batch_size: int, step: str, ctx: ddp.DistContext | None,
    init_from, keep_vanished_items: bool, threads: int | None,
) -> list[EpochStats]:
    is_main = ctx is None or ctx.is_main
    base = None
    if init_from is not None:
        if resume:
            raise UserError("--resume and --init-from exclude each other: resume continues the run in MODEL_DIR")
        base = load_checkpoint(init_from, "cpu")
        check_compatible(base.config, params.model, str(init_from))
    sessions, item_map, counts, frame = load_training_data(
        train_path, base.item_map if base else None, keep_vanished_items
    )
    model, warm, warm_optimizer = None, None, None
    if base is not None:
        model, warm = warm_start_model(base, item_map, params.model)
        warm_optimizer = warm_start_optimizer_state(
            load_optimizer_state(init_from, "cpu"), base, model, item_map, params.training
        )
    if sessions.n_sessions < params.batch_size:
        log.warning("only %d sessions, fewer than batch_size=%d: the batch is smaller", sessions.n_sessions, params.batch_size)
    valid = None
    if valid_path is not None:
        valid_sessions, n_unknown = load_eval_data(valid_path, item_map)
        valid = (valid_sessions, n_unknown)
        k = check_metric(metric, len(item_map))
        cutoffs = sorted({k, *(c for c in DEFAULT_CUTOFFS if c <= len(item_map))})
    summary = {
        "train_file": str(train_path),
        "valid_file": str(valid_path) if valid_path else None,
        "events": int(sessions.n_events),
        "sessions": int(sessions.n_sessions),
        "items": len(item_map),
        "time_span": [float(frame["Time"].min()), float(frame["Time"].max())],
        "device": str(dev),
        "seed": seed,
        "selection_metric": metric if valid else None,
        "world_size": ctx.world_size if ctx else 1,
        "settings": params.training.to_dict(),
    }
    if warm is not None:
        summary["init_from"] = {"model_dir": str(init_from), "model_version": base.version, **warm}
    if ctx is not None:
        shard = ddp.shard_sessions(sessions, ctx.rank, ctx.world_size)
        trainer = Trainer(
            params, shard, counts, dev, seed + ctx.rank, model=model, step=step, world_size=ctx.world_size,
            is_main=is_main, threads=threads,
        )
        ddp.broadcast_parameters(trainer.model)
    else:
        trainer = Trainer(params, sessions, counts, dev, seed, model=model, step=step, threads=threads)
    if warm_optimizer is not None:
        trainer.load_optimizer_state(warm_optimizer)
    history: list[EpochStats] = []
    best: tuple[float, int, dict[str, Tensor]] | None = None
    first_epoch = 1
    if resume:
        first_epoch, history, best = _resume(trainer, out_dir, params, item_map, dev)
    log.info(
        "training %s on %s: %d events, %d sessions, %d items, %s",
        params.loss, dev, sessions.n_events, sessions.n_sessions, len(item_map), params,
    )
    for epoch in range(first_epoch, params.n_epochs + 1):
        stats = trainer.train_epoch(epoch)
        if not is_main:
            history.append(stats)
            ddp.barrier()  # rank 0 validates and writes the checkpoint meanwhile
            continue
        if valid is not None:
            trainer.model.eval()
            result = evaluate(
                ModelScorer(trainer.model), valid[0], cutoffs, ties="conservative", batch_size=eval_batch_size,
                device=dev, n_unknown=valid[1], list_metrics=False,
            )
            stats.valid = result.metrics
            value = result.metrics[metric]
            if best is None or value > best[0]:
                best = (value, epoch, copy.deepcopy(trainer.model.state_dict()))
        history.append(stats)
        log.info(
            "epoch %d/%d: loss %.4f, %.1f s, %.0f events/s%s",
            epoch, params.n_epochs, stats.loss, stats.seconds, stats.events_per_s,
            f", {metric} {stats.valid[metric]:.4f}" if stats.valid else "",
        )
        complete = epoch == params.n_epochs
        training = {**summary, "epochs": [s.to_dict() for s in history], "complete": complete}
        if best is not None:
            training["best_epoch"] = best[1]
            training["best_" + metric] = best[0]
        resume_state = None
        if not complete:
            resume_state = {
                "epoch": epoch,
                "weights": trainer.model.state_dict(),
                "sampler": trainer.sampler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "best_value": best[0] if best else float("nan"),
                "best_epoch": best[1] if best else 0,
            }
        save_checkpoint(
            out_dir, trainer.model, item_map, counts, training,
            state_dict=best[2] if best is not None else None, resume_state=resume_state,
            optimizer_state=trainer.optimizer_state(),
        )
        if ctx is not None:
            ddp.barrier()
    return history


def check_metric(metric: str, n_items: int | None = None) -> int:
    """The cut-off K of a selection metric recall@K / mrr@K / ndcg@K (at most the catalogue size)."""
    name, _, k = metric.partition("@")
    limit = n_items if n_items is not None else float("inf")
    if name not in ("recall", "mrr", "ndcg") or not k.isdigit() or not 1 <= int(k) <= limit:
        bound = f" with 1 <= K <= {n_items}" if n_items is not None else ""
        raise UserError(f"--metric {metric!r}: expected recall@K, mrr@K or ndcg@K{bound}, e.g. mrr@20")
    return int(k)


def _resume(trainer: Trainer, out_dir: Path, params: HyperParams, item_map: ItemMap, dev: torch.device):
    """Restore the last finished epoch of an interrupted run in out_dir."""
    metadata = read_metadata(out_dir)
    state = load_resume_state(out_dir, dev)
    if state is None:
        raise UserError(f"{out_dir}: nothing to resume (the run there finished, or never wrote an epoch)")
    recorded = {**model_config(metadata, out_dir).to_dict(), **training_settings(metadata)}
    if recorded != params.to_dict():
        raise UserError(f"{out_dir}: was trained with other parameters; resume with the same --params/--set")
    if list(metadata["item_ids"]) != [str(i) for i in item_map.ids]:
        raise UserError(f"{out_dir}: was trained on another training file; resume with the same TRAIN")
    trainer.model.load_state_dict(state["weights"])
    optimizer_state = load_optimizer_state(out_dir, dev)
    if optimizer_state is None:
        raise UserError(f"{out_dir}: the optimiser state ({OPTIMIZER_FILE}) is missing, cannot resume")
    trainer.load_optimizer_state(optimizer_state)
    trainer.sampler.load_state_dict(state["sampler"])
    torch.set_rng_state(state["torch_rng"].cpu())
    history = [EpochStats(**e) for e in metadata["training"]["epochs"]]
    best = None
    if state["best_epoch"]:
        best_weights = torch.load(out_dir / "model.pt", map_location=dev, weights_only=True)
        best = (float(state["best_value"]), int(state["best_epoch"]), best_weights)
    log.info("resuming %s after epoch %d", out_dir, state["epoch"])
    return int(state["epoch"]) + 1, history, best
