"""Warm-start retraining: continue from a trained model on a newer log whose catalogue changed.

Known items keep their learned rows (output weights, biases, input embedding) and the GRU weights
are copied; items new to the log get fresh rows: the reference's random initialisation for their
weights and the mean learned bias as their bias, so a new item starts as an average item rather
than an arbitrary one. Items missing from the new log are kept (a returning item keeps its
knowledge) unless asked to drop them. The Adagrad state carries over the same way (known rows keep
their accumulated squared gradients and momentum, new rows start at zero), so training continues
with the step sizes it had reached instead of restarting with large steps that would undo what
the model learned.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from gru4rec.model.checkpoint import Checkpoint
from gru4rec.model.config import ModelConfig
from gru4rec.training.settings import TrainingSettings
from gru4rec.data.sessions import ItemMap
from gru4rec.foundation.errors import UserError
from gru4rec.model.network import GRU4Rec

log = logging.getLogger(__name__)

ARCHITECTURE = ("layers", "embedding", "constrained_embedding")
ITEM_TABLES = ("Wy.weight", "By.weight", "E.weight", "onehot.Wx.weight")  # one row per item


def check_compatible(base: ModelConfig, config: ModelConfig, source: str) -> None:
    changed = [name for name in ARCHITECTURE if getattr(base, name) != getattr(config, name)]
    if changed:
        details = ", ".join(f"{n}: {getattr(base, n)!r} -> {getattr(config, n)!r}" for n in changed)
        raise UserError(f"--init-from {source}: cannot change the architecture of a warm start ({details})")


def _row_mapping(base: Checkpoint, item_map: ItemMap) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    old_index = base.item_map.lookup(item_map.ids)  # -1 for new items
    known = np.flatnonzero(old_index >= 0)
    return torch.from_numpy(old_index[known]), torch.from_numpy(known), np.flatnonzero(old_index < 0)


@torch.no_grad()
def warm_start_model(base: Checkpoint, item_map: ItemMap, config: ModelConfig) -> tuple[GRU4Rec, dict[str, int]]:
    """A model for `item_map` that carries over everything `base` learned about its items."""
    model = GRU4Rec(len(item_map), config)
    src, dst, new = _row_mapping(base, item_map)
    known = dst.numpy()
    base_state = base.model.state_dict()
    for name, tensor in model.state_dict().items():
        old = base_state[name].to(tensor.device)
        if name in ITEM_TABLES:
            tensor[dst] = old[src]  # item rows: known items keep theirs
        else:
            tensor.copy_(old)  # GRU weights: independent of the catalogue
    model.By.weight[torch.from_numpy(new)] = base.model.By.weight.mean()
    summary = {
        "base_items": len(base.item_map),
        "kept_items": len(known),
        "new_items": len(new),
        "dropped_items": len(base.item_map) - len(known),
    }
    log.info("warm start: %(kept_items)d known items kept, %(new_items)d new, %(dropped_items)d dropped", summary)
    return model, summary


@torch.no_grad()
def warm_start_optimizer_state(
    states: list[dict[str, Any]] | None, base: Checkpoint, model: GRU4Rec, item_map: ItemMap, settings: TrainingSettings
) -> list[dict[str, Any]] | None:
    """The base run's Adagrad state remapped to the new catalogue (None: start afresh)."""
    base_settings = base.training_settings
    if states is None or settings.optimizer != "adagrad" or base_settings.get("optimizer", "adagrad") != "adagrad" or len(states) != 1:
        log.info("warm start: optimiser state starts afresh")
        return None
    if (settings.momentum > 0) != (float(base_settings.get("momentum", 0.0)) > 0):
        log.info("warm start: momentum switched on/off, optimiser state starts afresh")
        return None
    src, dst, _ = _row_mapping(base, item_map)
    names = [name for name, _ in model.named_parameters()]
    state = {"state": {}, "param_groups": states[0]["param_groups"]}
    for index, values in states[0]["state"].items():
        if names[int(index)] in ITEM_TABLES:
            shape = dict(model.named_parameters())[names[int(index)]].shape
            remapped = {}
            for key, tensor in values.items():
                fresh = tensor.new_zeros(shape)
                fresh[dst] = tensor[src]
                remapped[key] = fresh
            state["state"][index] = remapped
        else:
            state["state"][index] = values
    group = state["param_groups"][0]
    group.update(lr=settings.learning_rate, momentum=settings.momentum)
    return [state]
