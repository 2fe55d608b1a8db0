"""SASRec's parameters as users write them: `architecture = "sasrec"` plus the names below.

A parameter file, built-in set (`--params sasrec`) or `--set architecture=sasrec` that names the
architecture "sasrec" is read here instead of as GRU4Rec parameters (gru4rec.training.params
dispatches on the name). SASRecParams mirrors HyperParams: the network's configuration
(gru4rec.model.sasrec.SASRecConfig, saved with the model) and the training settings below (saved as
training metadata).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

from gru4rec.foundation.errors import UserError
from gru4rec.model.config import check_finite, check_param
from gru4rec.model.sasrec import ARCHITECTURE, SASREC_FIELDS, SASRecConfig

log = logging.getLogger(__name__)

SASREC_LOSSES = ("cross-entropy", "sampled-softmax", "gbce")
LOSS_ALIASES = {"xe": "cross-entropy", "ce": "cross-entropy", "softmax": "cross-entropy", "sampled": "sampled-softmax"}


@dataclass(frozen=True)
class SASRecSettings:
    """Loss, mini-batches and the Adam optimiser.

    cross-entropy     full softmax over the whole catalogue at every position (exact; the default)
    sampled-softmax   softmax over the target and n_sample shared negatives drawn proportional to
                      support ** sample_alpha, scores corrected by -logq * log(expected count)
                      (Bengio & Senecal; Yi et al. 2019): for catalogues too large for the full one
    gbce              generalised binary cross-entropy of gSASRec (Petrov & Macdonald, RecSys 2023)
                      on n_sample negatives; calibration gbce_t (0: plain BCE, 1: full calibration).
                      Its calibration assumes uniform negatives, i.e. sample_alpha = 0
    """

    loss: str = "cross-entropy"
    batch_size: int = 128  # sequences (sessions, or windows of long ones) per update
    learning_rate: float = 0.001
    weight_decay: float = 0.0  # Adam's L2 penalty
    n_epochs: int = 20
    n_sample: int = 2048  # sampled-softmax/gbce: negatives shared by the mini-batch
    sample_alpha: float = 0.5  # sampled-softmax/gbce: negatives drawn proportional to support ** alpha
    logq: float = 1.0  # sampled-softmax: weight of the logQ correction
    gbce_t: float = 0.75  # gbce: calibration parameter t
    sample_cache_size: int = 10_000_000  # negatives pre-drawn at once (device memory: 8 B each)

    def __post_init__(self) -> None:
        loss = LOSS_ALIASES.get(self.loss, self.loss)
        object.__setattr__(self, "loss", loss)
        check_param(loss in SASREC_LOSSES, "loss", loss, f"one of {', '.join(SASREC_LOSSES)} for sasrec")
        check_param(self.batch_size >= 1, "batch_size", self.batch_size, ">= 1")
        for name in ("learning_rate", "weight_decay", "sample_alpha", "logq", "gbce_t"):
            check_finite(name, getattr(self, name))
        check_param(self.learning_rate > 0, "learning_rate", self.learning_rate, "> 0")
        check_param(self.weight_decay >= 0, "weight_decay", self.weight_decay, ">= 0")
        check_param(self.n_epochs >= 1, "n_epochs", self.n_epochs, ">= 1")
        check_param(self.n_sample >= 0, "n_sample", self.n_sample, ">= 0")
        check_param(loss == "cross-entropy" or self.n_sample >= 1, "n_sample", self.n_sample, f">= 1 for loss={loss}")
        check_param(0.0 <= self.sample_alpha <= 1.0, "sample_alpha", self.sample_alpha, "in [0, 1]")
        check_param(self.logq >= 0, "logq", self.logq, ">= 0")
        check_param(0.0 <= self.gbce_t <= 1.0, "gbce_t", self.gbce_t, "in [0, 1]")
        check_param(self.sample_cache_size >= 1, "sample_cache_size", self.sample_cache_size, ">= 1")
        if loss == "gbce" and self.sample_alpha != 0:
            log.warning("gbce's calibration assumes uniform negatives; sample_alpha=%s draws them by popularity", self.sample_alpha)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SETTINGS_FIELDS = tuple(f.name for f in dataclasses.fields(SASRecSettings))
FIELDS = {
    **{f.name: f for f in dataclasses.fields(SASRecConfig)},
    **{f.name: f for f in dataclasses.fields(SASRecSettings)},
}


@dataclass(frozen=True, init=False)
class SASRecParams:
    """SASRec's configuration and training settings, built from their names (like HyperParams)."""

    architecture: ClassVar[str] = ARCHITECTURE
    model: SASRecConfig = field(default_factory=SASRecConfig)
    training: SASRecSettings = field(default_factory=SASRecSettings)

    def __init__(self, model: SASRecConfig | None = None, training: SASRecSettings | None = None, **values: Any) -> None:
        unknown = sorted(set(values) - set(FIELDS))
        if unknown:
            raise TypeError(f"unknown SASRec parameter(s): {', '.join(unknown)}")
        model_values = {k: v for k, v in values.items() if k in SASREC_FIELDS}
        training_values = {k: v for k, v in values.items() if k in SETTINGS_FIELDS}
        object.__setattr__(self, "model", dataclasses.replace(model or SASRecConfig(), **model_values))
        object.__setattr__(self, "training", dataclasses.replace(training or SASRecSettings(), **training_values))

    def __getattr__(self, name: str) -> Any:
        if name in SASREC_FIELDS:
            return getattr(self.model, name)
        if name in SETTINGS_FIELDS:
            return getattr(self.training, name)
        raise AttributeError(name)

    def to_dict(self) -> dict[str, Any]:
        """Every parameter by name, the architecture first (what parameter files and tuning record)."""
        return {"architecture": ARCHITECTURE, **self.model.to_dict(), **self.training.to_dict()}

    def replace(self, **changes: Any) -> SASRecParams:
        return from_mapping({**self.to_dict(), **changes})

    def __repr__(self) -> str:
        return "SASRecParams(" + ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items() if k != "architecture") + ")"


def from_mapping(values: dict[str, Any], source: str = "parameters") -> SASRecParams:
    """Build from a dict naming `architecture = "sasrec"`; unknown names and ill-typed values are refused."""
    from gru4rec.training.params import check_names, coerce

    values = dict(values)
    architecture = values.pop("architecture", ARCHITECTURE)
    if architecture != ARCHITECTURE:
        raise UserError(f"{source}: architecture {architecture!r} is not {ARCHITECTURE!r}")
    check_names(values, FIELDS, source + " (sasrec)")
    return SASRecParams(**{k: coerce(k, v, source, FIELDS) for k, v in values.items()})
