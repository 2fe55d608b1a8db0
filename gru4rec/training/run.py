"""A whole training run: read the data, build (or warm-start, or resume) the trainer, then train epoch
after epoch, validating and rewriting MODEL_DIR after each one. `gru4rec train` and tuning call
`train`; the per-step work is gru4rec.training.trainer.Trainer's.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from gru4rec.data.sessions import ItemMap, Sessions, load_eval_data, load_training_data
from gru4rec.evaluation.protocol import DEFAULT_CUTOFFS, check_metric, evaluate
from gru4rec.evaluation.scorers import model_scorer
from gru4rec.foundation.devices import resolve_device, torch_threads
from gru4rec.foundation.errors import UserError
from gru4rec.foundation.atomic import check_output_dir
from gru4rec.model.checkpoint import (
    MODEL_FILE,
    MODEL_OUTPUT,
    OPTIMIZER_FILE,
    Checkpoint,
    load_checkpoint,
    load_optimizer_state,
    load_resume_state,
    load_weights,
    model_config,
    read_metadata,
    save_checkpoint,
    training_settings,
)
from gru4rec.model.network import GRU4Rec
from gru4rec.training import distributed as ddp
from gru4rec.training import sasrec
from gru4rec.training.memory import MemoryEstimate, check_training_memory, estimate_training_memory
from gru4rec.training.params import HyperParams
from gru4rec.training.trainer import EpochStats, Trainer, TrainingDiverged
from gru4rec.training.warm_start import check_compatible, warm_start_model, warm_start_optimizer_state

log = logging.getLogger(__name__)

MAX_SEED = 2**63 - 1 - 1024  # torch takes 64-bit seeds; distributed ranks add their rank
PROBE_ITEMS = 8


@dataclass(frozen=True)
class TrainOptions:
    """How to run training, apart from the hyper-parameters (the `gru4rec train` options)."""

    valid_path: str | os.PathLike[str] | None = None
    device: str = "auto"
    seed: int = 42
    metric: str = "mrr@20"
    resume: bool = False
    eval_batch_size: int = 512
    step: str = "auto"
    distributed: bool = False
    init_from: str | os.PathLike[str] | None = None
    keep_vanished_items: bool = True
    threads: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise UserError(f"--seed must be an integer from 0 to {MAX_SEED}, got {self.seed}")


def train(
    train_path: str | os.PathLike[str], out_dir: str | os.PathLike[str], params: HyperParams, **options: Any
) -> list[EpochStats]:
    """Train and write MODEL_DIR after every epoch (the best epoch's weights when validating).

    `options` are TrainOptions' fields. With `distributed`, this process is one rank of a torchrun
    job: it trains on its shard of the sessions, and rank 0 validates and writes MODEL_DIR.
    """
    opts = TrainOptions(**options)
    if params.architecture == sasrec.ARCHITECTURE:
        sasrec.check_options(opts)
    dev = resolve_device(opts.device)
    ctx = ddp.init_from_env(dev.type) if opts.distributed else None
    if ctx is not None and dev.type == "cuda":
        dev = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(dev)
    try:
        run = _Run.start(train_path, Path(out_dir), params, opts, dev, ctx)
        return run.epochs()
    finally:
        if ctx is not None:
            ddp.shutdown()


@dataclass
class _Data:
    """The training file read against an item map, plus a warm start's base model if any."""

    sessions: Sessions
    item_map: ItemMap
    counts: np.ndarray
    time_span: list[float]
    base: Checkpoint | None = None


def _read_data(train_path, params: HyperParams, opts: TrainOptions) -> _Data:
    base = None
    if opts.init_from is not None:
        if opts.resume:
            raise UserError("--resume and --init-from exclude each other: resume continues the run in MODEL_DIR")
        base = load_checkpoint(opts.init_from, "cpu")
        check_compatible(base.config, params.model, str(opts.init_from))
    sessions, item_map, counts, events = load_training_data(
        train_path, base.item_map if base else None, opts.keep_vanished_items
    )
    if sessions.n_sessions < params.training.batch_size:
        log.warning("only %d sessions, fewer than batch_size=%d: the batch is smaller", sessions.n_sessions, params.training.batch_size)
    return _Data(sessions, item_map, counts, events.time_span(), base)


def _memory_needed(data: _Data, params: HyperParams, validation: _Validation | None) -> MemoryEstimate:
    loaded = data.sessions.items.nbytes + data.sessions.offsets.nbytes
    if validation is not None:
        loaded += validation.sessions.items.nbytes + validation.sessions.offsets.nbytes
    return estimate_training_memory(len(data.item_map), params.model, params.training, validation is not None, loaded)


@dataclass
class _Validation:
    """The validation file and how epochs are compared on it."""

    sessions: Sessions
    n_unknown: int
    metric: str
    cutoffs: list[int]

    @classmethod
    def read(cls, path, item_map: ItemMap, metric: str) -> _Validation:
        sessions, n_unknown = load_eval_data(path, item_map)
        k = check_metric(metric, len(item_map))
        return cls(sessions, n_unknown, metric, sorted({k, *(c for c in DEFAULT_CUTOFFS if c <= len(item_map))}))

    def score(self, model: GRU4Rec, device: torch.device, batch_size: int) -> dict[str, float]:
        model.eval()
        result = evaluate(
            model_scorer(model), self.sessions, self.cutoffs, ties="conservative", batch_size=batch_size,
            device=device, n_unknown=self.n_unknown, list_metrics=False,
        )
        return result.metrics


def _make_trainer(data: _Data, params: HyperParams, opts: TrainOptions, dev: torch.device, ctx) -> tuple[Trainer, dict | None]:
    """The trainer (this rank's shard when distributed), warm-started when there is a base model."""
    if params.architecture == sasrec.ARCHITECTURE:
        return sasrec.SASRecTrainer(params, data.sessions, data.counts, dev, opts.seed, threads=opts.threads), None
    model, warm = None, None
    if data.base is not None:
        model, warm = warm_start_model(data.base, data.item_map, params.model)
    common = dict(model=model, step=opts.step, threads=opts.threads)
    if ctx is not None:
        shard = ddp.shard_sessions(data.sessions, ctx.rank, ctx.world_size)
        trainer = Trainer(params, shard, data.counts, dev, opts.seed + ctx.rank, world_size=ctx.world_size, is_main=ctx.is_main, **common)
        ddp.broadcast_parameters(trainer.model)
    else:
        trainer = Trainer(params, data.sessions, data.counts, dev, opts.seed, **common)
    if data.base is not None:
        state = warm_start_optimizer_state(
            load_optimizer_state(opts.init_from, "cpu"), data.base, trainer.model, data.item_map, params.training
        )
        if state is not None:
            trainer.load_optimizer_state(state)
    return trainer, warm


@dataclass
class _Best:
    value: float
    epoch: int
    weights: dict[str, Tensor]


@dataclass
class _Run:
    """One run in progress: what every epoch needs to train, validate and write MODEL_DIR."""

    out_dir: Path
    params: HyperParams
    opts: TrainOptions
    device: torch.device
    ctx: ddp.DistContext | None
    data: _Data
    trainer: Trainer
    validation: _Validation | None
    summary: dict[str, Any]
    history: list[EpochStats] = field(default_factory=list)
    best: _Best | None = None
    first_epoch: int = 1

    @classmethod
    def start(cls, train_path, out_dir: Path, params: HyperParams, opts: TrainOptions, dev, ctx) -> _Run:
        if ctx is None or ctx.is_main:  # rank 0 writes; check before hours of training, not after them
            out_dir = check_output_dir(out_dir, MODEL_OUTPUT)
        data = _read_data(train_path, params, opts)
        validation = _Validation.read(opts.valid_path, data.item_map, opts.metric) if opts.valid_path is not None else None
        if params.architecture != sasrec.ARCHITECTURE:  # SASRec checks its own score matrices
            check_training_memory(_memory_needed(data, params, validation), dev)
        trainer, warm = _make_trainer(data, params, opts, dev, ctx)
        summary = _summary(train_path, data, params, opts, dev, ctx, validation is not None)
        if warm is not None:
            summary["init_from"] = {"model_dir": str(opts.init_from), "model_version": data.base.version, **warm}
        run = cls(out_dir, params, opts, dev, ctx, data, trainer, validation, summary)
        if opts.resume:
            run._resume()
        log.info(
            "training %s on %s: %d events, %d sessions, %d items, %s", params.training.loss, dev,
            data.sessions.n_events, data.sessions.n_sessions, len(data.item_map), params,
        )
        return run

    @property
    def is_main(self) -> bool:
        return self.ctx is None or self.ctx.is_main

    def epochs(self) -> list[EpochStats]:
        n_epochs = self.params.training.n_epochs
        for epoch in range(self.first_epoch, n_epochs + 1):
            try:
                stats = self.trainer.train_epoch(epoch)
            except TrainingDiverged as exc:
                raise TrainingDiverged(f"{exc} ({_output_kept(self.out_dir)})") from None
            check_not_diverged(self.trainer.model, epoch, self.out_dir)
            if self.is_main:
                self._validate(epoch, stats)
            self.history.append(stats)
            if self.is_main:
                self._log(epoch, stats)
                self._save(epoch, complete=epoch == n_epochs)
            if self.ctx is not None:
                ddp.barrier()  # the other ranks wait while rank 0 validates and writes
        return self.history

    def _validate(self, epoch: int, stats: EpochStats) -> None:
        if self.validation is None:
            return
        with torch_threads(self.trainer.threads):  # as many threads as training (more collapse on a busy CPU)
            stats.valid = self.validation.score(self.trainer.model, self.device, self.opts.eval_batch_size)
        value = stats.valid[self.validation.metric]
        if self.best is None or value > self.best.value:
            self.best = _Best(value, epoch, copy.deepcopy(self.trainer.model.state_dict()))

    def _log(self, epoch: int, stats: EpochStats) -> None:
        metric = self.opts.metric
        log.info(
            "epoch %d/%d: loss %.4f, %.1f s, %.0f events/s%s",
            epoch, self.params.training.n_epochs, stats.loss, stats.seconds, stats.events_per_s,
            f", {metric} {stats.valid[metric]:.4f}" if stats.valid else "",
        )

    def _save(self, epoch: int, complete: bool) -> None:
        training = {**self.summary, "epochs": [s.to_dict() for s in self.history], "complete": complete}
        if self.best is not None:
            training["best_epoch"] = self.best.epoch
            training["best_" + self.opts.metric] = self.best.value
        save_checkpoint(
            self.out_dir, self.trainer.model, self.data.item_map, self.data.counts, training,
            state_dict=self.best.weights if self.best is not None else None,
            resume_state=None if complete else self._resume_state(epoch),
            optimizer_state=self.trainer.optimizer_state(),
        )

    def _resume_state(self, epoch: int) -> dict[str, Any]:
        """What `--resume` needs beyond the model directory to continue exactly where this epoch ended."""
        return {
            "epoch": epoch,
            "weights": self.trainer.model.state_dict(),
            "sampler": self.trainer.sampler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "best_value": self.best.value if self.best else float("nan"),
            "best_epoch": self.best.epoch if self.best else 0,
        }

    def _resume(self) -> None:
        """Restore the last finished epoch of an interrupted run in out_dir."""
        out_dir, dev, trainer = self.out_dir, self.device, self.trainer
        metadata = read_metadata(out_dir)
        state = load_resume_state(out_dir, dev)
        if state is None:
            raise UserError(f"{out_dir}: nothing to resume (the run there finished, or never wrote an epoch)")
        recorded = {**model_config(metadata, out_dir, (self.params.architecture,)).to_dict(), **training_settings(metadata)}
        if recorded != {k: v for k, v in self.params.to_dict().items() if k != "architecture"}:
            raise UserError(f"{out_dir}: was trained with other parameters; resume with the same --params/--set")
        if list(metadata["item_ids"]) != [str(i) for i in self.data.item_map.ids]:
            raise UserError(f"{out_dir}: was trained on another training file; resume with the same TRAIN")
        seed = metadata["training"].get("seed", self.opts.seed)
        if seed != self.opts.seed:
            raise UserError(
                f"{out_dir}: was trained with --seed {seed}; resume with --seed {seed} (resuming continues "
                f"that run's random streams, so another seed would not take effect)"
            )
        trainer.model.load_state_dict(state["weights"])
        optimizer_state = load_optimizer_state(out_dir, dev)
        if optimizer_state is None:
            raise UserError(f"{out_dir}: the optimiser state ({OPTIMIZER_FILE}) is missing, cannot resume")
        trainer.load_optimizer_state(optimizer_state)
        trainer.sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["torch_rng"].cpu())
        self.history = [EpochStats(**e) for e in metadata["training"]["epochs"]]
        if state["best_epoch"]:
            best_weights = load_weights(out_dir / MODEL_FILE, dev)
            self.best = _Best(float(state["best_value"]), int(state["best_epoch"]), best_weights)
        self.first_epoch = int(state["epoch"]) + 1
        log.info("resuming %s after epoch %d", out_dir, state["epoch"])


@torch.no_grad()
def check_not_diverged(model: torch.nn.Module, epoch: int, out_dir: Path) -> None:
    """Stop a run whose epoch left garbage: weights that are not finite, or a network whose steps or
    scores overflow float32 (learning_rate=1e30 leaves finite weights near 1e30 whose scores are NaN).

    Cheap: one pass over the weights and two steps of a few items, one at a time (as the service
    steps a session) and together (as evaluation does); their results can differ in how they overflow.
    """
    advice = f"lower learning_rate and train again ({_output_kept(out_dir)})"
    for name, weights in model.named_parameters():
        if not bool(torch.isfinite(weights).all()):
            raise UserError(f"training diverged in epoch {epoch}: the weights {name} became NaN or infinite; {advice}")
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        items = torch.arange(min(model.n_items, PROBE_ITEMS), device=device)
        outputs = [_probe(model, items)] + [_probe(model, items[i : i + 1]) for i in range(len(items))]
    finally:
        model.train(was_training)
    if not all(bool(torch.isfinite(t).all()) for t in outputs):
        largest = max(float(w.abs().max()) for w in model.parameters())
        raise UserError(
            f"training diverged in epoch {epoch}: the network's scores overflow (largest weight {largest:.3g}); {advice}"
        )


def _output_kept(out_dir: Path) -> str:
    """What a run stopped by divergence leaves in its output directory."""
    return f"{out_dir} keeps the epoch written before" if out_dir.exists() else f"nothing was written to {out_dir}"


def _probe(model: torch.nn.Module, items: Tensor) -> Tensor:
    """The scores of every item after two clicks per row (a non-finite state shows in the scores),
    through the same scorer evaluation uses, so any architecture can be probed."""
    scorer = model_scorer(model)
    state = scorer.step(scorer.begin(len(items)), items)
    return scorer.score(scorer.step(state, items.roll(1)))


def _summary(train_path, data: _Data, params: HyperParams, opts: TrainOptions, dev, ctx, validating: bool) -> dict[str, Any]:
    """The training part of metadata.json: data, settings and run; epochs are added as they finish."""
    return {
        "train_file": str(train_path),
        "valid_file": str(opts.valid_path) if opts.valid_path else None,
        "events": int(data.sessions.n_events),
        "sessions": int(data.sessions.n_sessions),
        "items": len(data.item_map),
        "time_span": data.time_span,
        "device": str(dev),
        "seed": opts.seed,
        "selection_metric": opts.metric if validating else None,
        "world_size": ctx.world_size if ctx else 1,
        "settings": params.training.to_dict(),
    }
