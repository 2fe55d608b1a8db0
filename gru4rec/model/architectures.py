"""The networks a model directory can hold, by the name its metadata records ("model.architecture").

Each architecture pairs its configuration dataclass (what is saved as metadata) with its network
class (what model.pt holds the weights of). Commands that only know how to run a GRU (the service,
export, warm starts) load with the default `architectures=("gru4rec",)` and so refuse other models
with a clear message; evaluation and comparison accept all of them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import nn

from gru4rec.model import config as gru_config
from gru4rec.model import sasrec
from gru4rec.model.network import GRU4Rec


@dataclass(frozen=True)
class Architecture:
    name: str
    config_class: type
    network_class: type[nn.Module]

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self.config_class))

    def build(self, n_items: int, config: Any) -> nn.Module:
        return self.network_class(n_items, config)


ARCHITECTURES: dict[str, Architecture] = {
    gru_config.ARCHITECTURE: Architecture(gru_config.ARCHITECTURE, gru_config.ModelConfig, GRU4Rec),
    sasrec.ARCHITECTURE: Architecture(sasrec.ARCHITECTURE, sasrec.SASRecConfig, sasrec.SASRec),
}
ALL = tuple(ARCHITECTURES)


def architecture_of(model: nn.Module) -> str:
    """The registered name of a network instance."""
    for arch in ARCHITECTURES.values():
        if type(model) is arch.network_class:
            return arch.name
    raise TypeError(f"{type(model).__name__} is not a registered architecture")


def build_network(n_items: int, config: Any) -> nn.Module:
    """The network that a configuration describes (GRU4Rec for ModelConfig, SASRec for SASRecConfig)."""
    for arch in ARCHITECTURES.values():
        if type(config) is arch.config_class:
            return arch.build(n_items, config)
    raise TypeError(f"{type(config).__name__} is not a registered configuration")
