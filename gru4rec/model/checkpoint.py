"""Model directories: tensors only (loadable with torch.load(weights_only=True)) plus JSON metadata.

    MODEL_DIR/model.pt        state_dict of GRU4Rec (no pickled objects, no sample buffer)
    MODEL_DIR/metadata.json   format version, the network's configuration ("model"), item id map and
                              training counts, library versions, and under "training" the training
                              settings, data summary and per-epoch history
    MODEL_DIR/optimizer.pt    the optimiser state after the last epoch (tensors only), so that
                              `--resume` and warm starts (`--init-from`) continue training
    MODEL_DIR/resume.pt       only while training is unfinished: last weights, RNG state and
                              progress, for `gru4rec train --resume`

A directory is always written whole and atomically. Format 1 (releases before the split of the
configuration) kept every parameter in one "hyperparameters" table; it is still read.
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
from gru4rec.model.architectures import ARCHITECTURES, architecture_of, build_network
from gru4rec.model.config import ARCHITECTURE, MODEL_FIELDS, ModelConfig
from gru4rec.data.sessions import ItemMap
from gru4rec.foundation.errors import ModelUnavailable
from gru4rec.model.network import GRU4Rec

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MODEL_FILE = "model.pt"
METADATA_FILE = "metadata.json"
RESUME_FILE = "resume.pt"
OPTIMIZER_FILE = "optimizer.pt"
REQUIRED_METADATA = {1: ("hyperparameters", "item_ids", "item_counts"), 2: ("model", "item_ids", "item_counts")}


@dataclass
class Checkpoint:
    model: GRU4Rec  # or another registered architecture's network (see model.architectures)
    item_map: ItemMap
    item_counts: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @property
    def architecture(self) -> str:
        return architecture_of(self.model)

    @property
    def training_settings(self) -> dict[str, Any]:
        """How the model was trained (loss, batch size, ...), as recorded; {} if not recorded."""
        return training_settings(self.metadata)

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """Every parameter by its reference name: the network's configuration and the training settings."""
        return {**self.config.to_dict(), **self.training_settings}

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
        "model": {"architecture": architecture_of(model), **model.config.to_dict()},
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
        raise ModelUnavailable(f"{path}: model directory not found")
    meta_path = path / METADATA_FILE
    if not meta_path.exists() or not (path / MODEL_FILE).exists():
        raise ModelUnavailable(f"{path}: not a model directory (needs {METADATA_FILE} and {MODEL_FILE})")
    try:
        metadata = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelUnavailable(f"{meta_path}: unreadable metadata ({exc})") from None
    version = metadata.get("format_version") if isinstance(metadata, dict) else None
    if version not in READABLE_VERSIONS:
        raise ModelUnavailable(
            f"{path}: model format version {version!r}, this gru4rec reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}; retrain the model or use the gru4rec release that wrote it"
        )
    missing = [k for k in REQUIRED_METADATA[version] if k not in metadata]
    if missing:
        raise ModelUnavailable(f"{meta_path}: incomplete metadata, missing {', '.join(missing)}")
    return metadata


def model_config(
    metadata: dict[str, Any], source: Path | str, architectures: tuple[str, ...] = (ARCHITECTURE,)
) -> ModelConfig:
    """The network's configuration recorded in metadata (format 2: "model"; format 1: "hyperparameters").

    A model of an architecture outside `architectures` is refused (ModelUnavailable).
    """
    architecture = ARCHITECTURE
    if metadata.get("format_version") == 1:
        values = {k: v for k, v in (metadata.get("hyperparameters") or {}).items() if k in MODEL_FIELDS}
    else:
        values = dict(metadata.get("model") or {})
        architecture = values.pop("architecture", ARCHITECTURE)
        if architecture not in architectures:
            raise ModelUnavailable(f"{source}: a {architecture!r} model; this command reads {', '.join(map(repr, architectures))} models")
    if architecture not in ARCHITECTURES:
        raise ModelUnavailable(f"{source}: unknown architecture {architecture!r}")
    arch = ARCHITECTURES[architecture]
    unknown = sorted(set(values) - set(arch.fields))
    if unknown:
        raise ModelUnavailable(f"{source}: unknown model setting(s) {', '.join(unknown)}")
    try:
        return arch.config_class(**values)
    except (TypeError, ValueError) as exc:
        raise ModelUnavailable(f"{source}: damaged model configuration ({exc})") from None


def training_settings(metadata: dict[str, Any]) -> dict[str, Any]:
    """The training settings recorded in metadata (format 1 kept them among "hyperparameters")."""
    if metadata.get("format_version") == 1:
        return {k: v for k, v in (metadata.get("hyperparameters") or {}).items() if k not in MODEL_FIELDS}
    return dict((metadata.get("training") or {}).get("settings") or {})


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def load_checkpoint(
    path: str | os.PathLike[str], device: str | torch.device = "cpu", architectures: tuple[str, ...] = (ARCHITECTURE,)
) -> Checkpoint:
    """A model directory's network, item map and counts; `architectures` are the kinds of network accepted."""
    path = Path(path)
    metadata = read_metadata(path)
    config = model_config(metadata, path / METADATA_FILE, architectures)
    item_map = ItemMap.from_ids(metadata["item_ids"])
    model = build_network(len(item_map), config)
    try:
        state = torch.load(path / MODEL_FILE, map_location=device, weights_only=True)
        model.load_state_dict(state)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as exc:
        # a truncated or foreign file: torch.load raises UnpicklingError for non-torch bytes
        raise ModelUnavailable(f"{path / MODEL_FILE}: cannot load weights ({_first_line(exc)})") from None
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
        raise ModelUnavailable(f"{file}: cannot load {what} ({_first_line(exc)})") from None
