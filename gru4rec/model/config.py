"""What defines a GRU4Rec network, apart from how it is trained; saved with the model.

Names and defaults are the reference implementation's. Training settings (loss, batch size,
learning rate, ...) live in gru4rec.training.settings; `--params` files name both kinds of value
and gru4rec.training.params splits them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any

from gru4rec.foundation.errors import UserError

log = logging.getLogger(__name__)

ARCHITECTURE = "gru4rec"


def check_param(ok: bool, name: str, value: Any, expected: str) -> None:
    """Raise the one-line error for a parameter outside its range."""
    if not ok:
        raise UserError(f"parameter {name}={value!r} is invalid: expected {expected}")


def check_finite(name: str, value: float) -> None:
    check_param(math.isfinite(value), name, value, "a finite number")


@dataclass(frozen=True)
class ModelConfig:
    """The network: GRU layer sizes, input embedding mode and dropout (probabilities of DROPPING)."""

    layers: tuple[int, ...] = (100,)
    embedding: int = 0  # size of a separate input embedding (0: none)
    constrained_embedding: bool = True  # input embedding shared with the output weights
    dropout_p_embed: float = 0.0  # probability of dropping an input embedding unit
    dropout_p_hidden: float = 0.0  # probability of dropping a GRU output unit

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        check_param(len(self.layers) > 0 and all(x > 0 for x in self.layers), "layers", self.layers, "one or more positive sizes")
        check_param(self.embedding >= 0, "embedding", self.embedding, ">= 0")
        for name in ("dropout_p_embed", "dropout_p_hidden"):
            value = getattr(self, name)
            check_param(0.0 <= value < 1.0, name, value, "a drop probability in [0, 1)")
        if self.constrained_embedding and self.embedding > 0:
            log.warning("embedding=%d is ignored: constrained_embedding=true shares the output weights as input embedding", self.embedding)

    @property
    def embedding_mode(self) -> str:
        """'shared' (input embedding = output weights), 'separate' or 'none' (one-hot input)."""
        if self.constrained_embedding:
            return "shared"
        return "separate" if self.embedding > 0 else "none"

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["layers"] = list(self.layers)
        return data


MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(ModelConfig))
