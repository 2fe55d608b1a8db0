"""Model directories: tensors only (loadable with torch.load(weights_only=True)) plus JSON metadata.

    MODEL_DIR/model.pt        state_dict of GRU4Rec (no pickled objects, no sample buffer)
    MODEL_DIR/metadata.json   format version, hyper-parameters, item id map and training counts,
                              library versions, training data summary and per-epoch history
    MODEL_DIR/optimizer.pt    the optimiser state after the last epoch (tensors only), so that
                              `--resume` and warm starts (`--init-from`) continue training
    MODEL_DIR/resume.pt       only while training is unfinished: last weights, RNG state and
                              progress, for `gru4rec train --resume`

A directory is always written whole and atomically.
"""

from __future__ import annotations

import json
import os
import pickle
import platform
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

import gru4rec
from gru4rec.foundation.atomic import atomic_dir
from gru4rec.training.params import HyperParams, from_mapping
from gru4rec.data.sessions import ItemMap
from gru4rec.foundation.errors import UserError
from gru4rec.model.network import GRU4Rec

FORMAT_VERSION = 1
MODEL_FILE = "model.pt"
METADATA_FILE = "metadata.json"
RESUME_FILE = "resume.pt"
OPTIMIZER_FILE = "optimizer.pt"
REQUIRED_METADATA = ("hyperparameters", "item_ids", "item_counts")


@dataclass
class Checkpoint:
    model: GRU4Rec
    item_map: ItemMap
    item_counts: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def params(self) -> HyperParams:
        return self.model.params

    @property
    def version(self) -> str:
        """A short id of this model's weights, for caches and the API's model_version."""
        return str(self.metadata.get("model_version", "unknown"))


def library_versions() -> dict[str, str]:
    return {
        "gru4rec": gru4rec.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def save_checkpoint(
    path: str | os.PathLike[str],
    model: GRU4Rec,
    item_map: ItemMap,
    item_counts: np.ndarray,
    training: dict[str, Any],
    *,
    state_dict: dict[str, torch.Tensor] | None = None,
    resume_state: dict[str, Any] | None = None,
    optimizer_state: list[dict[str, Any]] | None = None,
) -> None:
    """Write the directory atomically; `state_dict` overrides the model's (e.g. the best epoch's)."""
    weights = {k: v.detach().cpu().contiguous() for k, v in (state_dict or model.state_dict()).items()}
    created = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    metadata = {
        "format_version": FORMAT_VERSION,
        "model_version": created,
        "created": created,
        "n_items": len(item_map),
        "hyperparameters": model.params.to_dict(),
        "libraries": library_versions(),
        "training": training,
        "item_ids": [str(i) for i in item_map.ids],
        "item_counts": [int(c) for c in item_counts],
    }
    with atomic_dir(path) as tmp:
        torch.save(weights, tmp / MODEL_FILE)
        if resume_state is not None:
            torch.save(resume_state, tmp / RESUME_FILE)
        if optimizer_state is not None:
            torch.save(optimizer_state, tmp / OPTIMIZER_FILE)
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=1))


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: model directory not found")
    meta_path = path / METADATA_FILE
    if not meta_path.exists() or not (path / MODEL_FILE).exists():
        raise UserError(f"{path}: not a model directory (needs {METADATA_FILE} and {MODEL_FILE})")
    try:
        metadata = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{meta_path}: unreadable metadata ({exc})") from None
    version = metadata.get("format_version") if isinstance(metadata, dict) else None
    if version != FORMAT_VERSION:
        raise UserError(
            f"{path}: model format version {version!r}, this gru4rec reads version {FORMAT_VERSION}; "
            "retrain the model or use the gru4rec release that wrote it"
        )
    missing = [k for k in REQUIRED_METADATA if k not in metadata]
    if missing:
        raise UserError(f"{meta_path}: incomplete metadata, missing {', '.join(missing)}")
    return metadata


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def load_checkpoint(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Checkpoint:
    path = Path(path)
    metadata = read_metadata(path)
    params = from_mapping(metadata["hyperparameters"], source=f"{path / METADATA_FILE}")
    item_map = ItemMap.from_ids(metadata["item_ids"])
    model = GRU4Rec(len(item_map), params)
    try:
        state = torch.load(path / MODEL_FILE, map_location=device, weights_only=True)
        model.load_state_dict(state)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as exc:
        # a truncated or foreign file: torch.load raises UnpicklingError for non-torch bytes
        raise UserError(f"{path / MODEL_FILE}: cannot load weights ({_first_line(exc)})") from None
    model.to(device).eval()
    counts = np.asarray(metadata["item_counts"], dtype=np.int64)
    return Checkpoint(model, item_map, counts, metadata)


def load_resume_state(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> dict[str, Any] | None:
    return _load_optional(Path(path) / RESUME_FILE, device, "the resume state")


def load_optimizer_state(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> list[dict[str, Any]] | None:
    return _load_optional(Path(path) / OPTIMIZER_FILE, device, "the optimiser state")


def _load_optional(file: Path, device: str | torch.device, what: str) -> Any:
    if not file.exists():
        return None
    try:
        return torch.load(file, map_location=device, weights_only=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as exc:
        raise UserError(f"{file}: cannot load {what} ({_first_line(exc)})") from None
