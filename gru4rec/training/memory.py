"""The memory a training run will need, estimated from the catalogue and the parameters before the
model, its optimiser state and the negative sampler are allocated, and checked against what the
device has: a run that cannot fit stops at once with one line saying why, not after minutes of work
(or by the out-of-memory killer).

Sizes are those of this implementation: float32 item tables (output weights and biases, a separate
or one-hot input table), GRU weights, the optimiser's state (Adagrad: accumulator, plus momentum when
momentum > 0; Adam: two moments), a copy of the weights for the best epoch when validating, the
pre-drawn negatives (8 bytes each, plus what drawing them takes) and the alias table and counts per
item. The training data is already in memory when this is checked (and counted in what is available).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gru4rec.foundation.errors import UserError
from gru4rec.foundation.memory import available_memory, format_bytes
from gru4rec.model.config import ModelConfig
from gru4rec.training.settings import TrainingSettings

FLOAT, INDEX = 4, 8
PER_ITEM = 8 + 4 + 8 + 4 + 8 + 48  # counts, logQ, the fused step's row slots, alias table (kept and built)
PER_NEGATIVE = 8 + 8 + 8 + 4 + 4 + 1 + 8  # the buffer, its successor while drawn and the draw's temporaries


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per part of a training run still to allocate, and the training data already loaded."""

    parts: dict[str, int]
    loaded: int = 0

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        return ", ".join(f"{name} {format_bytes(size)}" for name, size in self.parts.items() if size)


def model_sizes(n_items: int, config: ModelConfig) -> tuple[int, int]:
    """(item table entries, other weights) of a GRU4Rec network: float32 numbers, not bytes."""
    layers, mode = config.layers, config.embedding_mode
    item = n_items * (layers[-1] + 1)  # output weights and biases (also the input table when shared)
    if mode == "separate":
        item += n_items * config.embedding
    first_input = config.embedding if mode == "separate" else layers[-1]
    other = 0
    if mode == "none":  # the first layer's input weights are an item table
        item += n_items * 3 * layers[0]
        other += 3 * layers[0] * layers[0] + 3 * layers[0]
        first_input, layers = layers[0], layers[1:]
    size_in = first_input
    for size in layers:
        other += 3 * size * (size_in + size) + 6 * size  # nn.GRUCell: weight_ih, weight_hh, two biases
        size_in = size
    return item, other


def estimate_training_memory(
    n_items: int, config: ModelConfig, settings: TrainingSettings, validating: bool = False, loaded: int = 0
) -> MemoryEstimate:
    """What a run will allocate for its model, optimiser, sampler and per-item arrays (`loaded`: bytes
    of training data already in memory, reported beside it)."""
    item, other = model_sizes(n_items, config)
    weights = (item + other) * FLOAT
    moments = 2 if settings.optimizer == "adam" else 1 + (settings.momentum > 0)
    negatives = (settings.sample_cache_size // max(settings.n_sample, 1)) * settings.n_sample
    return MemoryEstimate({
        "item tables": item * FLOAT,
        "GRU weights": other * FLOAT,
        "optimiser state": weights * moments,
        "best-epoch copy": weights if validating else 0,
        "negative sampler": negatives * PER_NEGATIVE,
        "per-item arrays": n_items * PER_ITEM,
    }, loaded)


def device_memory_available(device: torch.device) -> int | None:
    """Bytes that can still be allocated on `device` (None: unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu":
        return available_memory()
    return None


def check_training_memory(estimate: MemoryEstimate, device: torch.device, available: int | None = None) -> None:
    """UserError when the run cannot fit in the memory the device has left."""
    available = device_memory_available(device) if available is None else available
    if available is not None and estimate.total > available:
        data = f" besides the {format_bytes(estimate.loaded)} of training data loaded" if estimate.loaded else ""
        raise UserError(
            f"training needs about {format_bytes(estimate.total)} more memory on {device}{data} ({estimate.describe()}) "
            f"but only {format_bytes(available)} is available; use fewer or smaller layers, a smaller embedding "
            f"or n_sample, or a machine with more memory"
        )
