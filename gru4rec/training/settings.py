"""How a network is trained (loss, batch, optimiser, negatives, epochs): saved as training metadata.

Names and defaults are the reference implementation's; what defines the network itself is
gru4rec.model.config.ModelConfig.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from gru4rec.model.config import check_finite, check_param

log = logging.getLogger(__name__)

LOSSES = ("cross-entropy", "bpr-max", "top1-max", "bpr", "top1")
LOSS_ALIASES = {"xe": "cross-entropy", "ce": "cross-entropy", "bprmax": "bpr-max", "top1max": "top1-max"}
OPTIMIZERS = ("adagrad", "adam")


@dataclass(frozen=True)
class TrainingSettings:
    """Loss, mini-batches, optimiser and negative sampling; defaults are the reference's."""

    loss: str = "cross-entropy"
    batch_size: int = 64
    learning_rate: float = 0.05
    momentum: float = 0.0
    n_sample: int = 2048  # extra negatives shared by the mini-batch
    sample_alpha: float = 0.5  # negatives drawn proportional to support ** sample_alpha
    bpreg: float = 1.0  # BPR-max score regularisation
    elu_param: float = 0.5  # BPR-max: ELU on the scores when > 0
    logq: float = 0.0  # cross-entropy: weight of the logQ correction
    n_epochs: int = 10
    optimizer: str = "adagrad"  # adagrad (reference: Adagrad + momentum, sparse rows) or adam
    sample_cache_size: int = 10_000_000  # negatives pre-drawn at once (device memory: 8 B each)

    def __post_init__(self) -> None:
        loss = LOSS_ALIASES.get(self.loss, self.loss)
        object.__setattr__(self, "loss", loss)
        check_param(loss in LOSSES, "loss", loss, f"one of {', '.join(LOSSES)}")
        check_param(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, f"one of {', '.join(OPTIMIZERS)}")
        check_param(self.batch_size >= 1, "batch_size", self.batch_size, ">= 1")
        for name in ("learning_rate", "momentum", "sample_alpha", "bpreg", "elu_param", "logq"):
            check_finite(name, getattr(self, name))
        check_param(self.learning_rate > 0, "learning_rate", self.learning_rate, "> 0")
        check_param(0.0 <= self.momentum < 1.0, "momentum", self.momentum, "in [0, 1)")
        check_param(self.n_sample >= 0, "n_sample", self.n_sample, ">= 0")
        check_param(0.0 <= self.sample_alpha <= 1.0, "sample_alpha", self.sample_alpha, "in [0, 1]")
        check_param(self.bpreg >= 0, "bpreg", self.bpreg, ">= 0")
        check_param(self.elu_param >= 0, "elu_param", self.elu_param, ">= 0")
        check_param(self.logq >= 0, "logq", self.logq, ">= 0")
        check_param(self.n_epochs >= 1, "n_epochs", self.n_epochs, ">= 1")
        check_param(self.sample_cache_size >= 1, "sample_cache_size", self.sample_cache_size, ">= 1")
        if self.optimizer == "adam" and self.momentum > 0:
            log.warning("momentum=%s is ignored by optimizer=adam", self.momentum)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


TRAINING_FIELDS = tuple(f.name for f in dataclasses.fields(TrainingSettings))
