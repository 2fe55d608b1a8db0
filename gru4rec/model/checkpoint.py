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

import dataclasses
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
from gru4rec.foundation.atomic import OutputKind, atomic_dir
from gru4rec.model.architectures import ARCHITECTURES, architecture_of, build_network
from gru4rec.model.config import ARCHITECTURE, MODEL_FIELDS, ModelConfig
from gru4rec.data.sessions import ItemMap
from gru4rec.foundation.errors import ModelUnavailable, UserError
from gru4rec.model.network import GRU4Rec

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MODEL_FILE = "model.pt"
METADATA_FILE = "metadata.json"
RESUME_FILE = "resume.pt"
OPTIMIZER_FILE = "optimizer.pt"
SERVING_INDEX_PREFIX = "serving-index-"
SERVING_INDEX_SUFFIX = ".faiss"
"""`gru4rec serve` caches the top-k index it builds beside the weights as PREFIX + KEY + SUFFIX (written
through a hidden temporary `.PREFIX...tmp`): such files belong to the model directory, so `train --out`
and `--resume` still recognise the directory as theirs (a replaced directory drops the stale index)."""
MODEL_OUTPUT = OutputKind(
    "model directory",
    "gru4rec train",
    frozenset({MODEL_FILE, METADATA_FILE, OPTIMIZER_FILE, RESUME_FILE}),
    METADATA_FILE,
    patterns=(f"{SERVING_INDEX_PREFIX}*{SERVING_INDEX_SUFFIX}", f".{SERVING_INDEX_PREFIX}*.tmp"),
)
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
    with atomic_dir(path, MODEL_OUTPUT) as tmp:
        torch.save(weights, tmp / MODEL_FILE)
        if resume_state is not None:
            torch.save(resume_state, tmp / RESUME_FILE)
        if optimizer_state is not None:
            torch.save(optimizer_state, tmp / OPTIMIZER_FILE)
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=1))


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """metadata.json of a model directory, checked field by field (it may have been edited by hand)."""
    path = Path(path)
    if not path.is_dir():
        raise ModelUnavailable(f"{path}: model directory not found{_interrupted_hint(path)}")
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
    _check_items(metadata, meta_path)
    _check_training(metadata, meta_path)
    return metadata


def _interrupted_hint(path: Path) -> str:
    """Where a swap cut between its two renames (no rename-exchange here) left the previous version."""
    if not path.parent.is_dir():
        return ""
    olds = sorted(path.parent.glob(f".{path.name}.old-*"))
    if not olds:
        return ""
    return (f" (an interrupted write left the previous version at {olds[-1]}; the next `gru4rec train "
            f"--out {path}` puts it back, or rename it to {path.name})")


def _check_items(metadata: dict[str, Any], meta_path: Path) -> None:
    """item_ids: distinct texts; item_counts: one non-negative integer per item; n_items agrees."""
    ids, counts = metadata["item_ids"], metadata["item_counts"]
    if not isinstance(ids, list) or len(ids) < 2 or not all(isinstance(i, str) for i in ids):
        raise ModelUnavailable(f"{meta_path}: item_ids must be a list of at least two item id strings")
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        duplicate = next(i for i in ids if i in seen or seen.add(i))
        raise ModelUnavailable(f"{meta_path}: item_ids lists the item id {duplicate!r} more than once")
    if not isinstance(counts, list) or not all(type(c) is int and c >= 0 for c in counts):
        raise ModelUnavailable(f"{meta_path}: item_counts must be a list of non-negative integers")
    if len(counts) != len(ids):
        raise ModelUnavailable(f"{meta_path}: item_counts has {len(counts)} entries for {len(ids)} item_ids")
    n_items = metadata.get("n_items", len(ids))
    if n_items != len(ids):
        raise ModelUnavailable(f"{meta_path}: n_items is {n_items!r} but item_ids lists {len(ids)} items")


def _check_training(metadata: dict[str, Any], meta_path: Path) -> None:
    """The tables of settings are tables, and no setting is null."""
    tables = {"hyperparameters": metadata.get("hyperparameters")} if metadata["format_version"] == 1 else {"model": metadata.get("model")}
    training = metadata.get("training", {})
    if not isinstance(training, dict):
        raise ModelUnavailable(f"{meta_path}: training must be a table, not {json.dumps(training)}")
    if "settings" in training:
        tables["training.settings"] = training["settings"]
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise ModelUnavailable(f"{meta_path}: {name} must be a table of settings, not {json.dumps(table)}")
        nulls = sorted(k for k, v in table.items() if v is None)
        if nulls:
            raise ModelUnavailable(f"{meta_path}: {name}.{nulls[0]} is null")


def model_config(
    metadata: dict[str, Any], source: Path | str, architectures: tuple[str, ...] = (ARCHITECTURE,)
) -> ModelConfig:
    """The network's configuration recorded in metadata (format 2: "model"; format 1: "hyperparameters").

    A model of an architecture outside `architectures` is refused (ModelUnavailable).
    """
    architecture = ARCHITECTURE
    if metadata.get("format_version") == 1:
        table = "hyperparameters"
        values = {k: v for k, v in (metadata.get("hyperparameters") or {}).items() if k in MODEL_FIELDS}
    else:
        table = "model"
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
    types = _field_types(arch.config_class)
    for name, value in values.items():
        if not _has_type(value, types[name]):
            raise ModelUnavailable(f"{source}: {table}.{name} is {json.dumps(value)}, expected {_TYPE_NAMES[types[name]]}")
    try:
        return arch.config_class(**values)
    except (TypeError, ValueError, UserError) as exc:
        raise ModelUnavailable(f"{source}: {table}: {exc}") from None


_TYPE_NAMES = {tuple: "a list of layer sizes", int: "an integer", bool: "true or false", float: "a number", str: "a text"}


def _field_types(config_class: type) -> dict[str, type]:
    return {f.name: type(f.default) for f in dataclasses.fields(config_class)}


def _has_type(value: Any, kind: type) -> bool:
    """JSON values as the configuration expects them (a bool is not a number here)."""
    if kind is tuple:
        return isinstance(value, list) and all(type(v) is int for v in value)
    if kind is float:
        return type(value) in (int, float)
    return type(value) is kind


def training_settings(metadata: dict[str, Any]) -> dict[str, Any]:
    """The training settings recorded in metadata (format 1 kept them among "hyperparameters")."""
    if metadata.get("format_version") == 1:
        return {k: v for k, v in (metadata.get("hyperparameters") or {}).items() if k not in MODEL_FIELDS}
    return dict((metadata.get("training") or {}).get("settings") or {})


def load_checkpoint(
    path: str | os.PathLike[str], device: str | torch.device = "cpu", architectures: tuple[str, ...] = (ARCHITECTURE,)
) -> Checkpoint:
    """The model in a directory, refusing damaged metadata, foreign or damaged weights and non-finite
    weights (a diverged model is never evaluated, warm-started or served). `architectures` are the
    kinds of network the caller can run; others are refused."""
    path = Path(path)
    metadata = read_metadata(path)
    config = model_config(metadata, path / METADATA_FILE, architectures)
    item_map = ItemMap.from_ids(metadata["item_ids"])
    model = build_network(len(item_map), config)
    state = load_weights(path / MODEL_FILE, device)
    _check_shapes(state, model, path / MODEL_FILE)
    model.load_state_dict(state)
    model.to(device).eval()
    counts = np.asarray(metadata["item_counts"], dtype=np.int64)
    return Checkpoint(model, item_map, counts, metadata)


def load_weights(file: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A state_dict file (tensors only), every tensor finite."""
    state = _load_tensors(file, device, "weights")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelUnavailable(f"{file}: not a state_dict of tensors")
    check_finite_weights(state, file)
    return state


def check_finite_weights(state: dict[str, torch.Tensor], source: Path | str) -> None:
    """Refuse weights holding NaN or infinity: such a model scores garbage, silently."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelUnavailable(
                f"{source}: tensor {name} holds non-finite values (NaN or infinity); the training that "
                f"wrote it diverged, train again with a lower learning_rate"
            )


def _check_shapes(state: dict[str, torch.Tensor], model: GRU4Rec, file: Path) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if set(state) != set(expected):
        raise ModelUnavailable(
            f"{file}: holds tensors {', '.join(sorted(state))}, but the network in {METADATA_FILE} has "
            f"{', '.join(sorted(expected))}"
        )
    for name, shape in expected.items():
        if tuple(state[name].shape) != shape:
            raise ModelUnavailable(
                f"{file}: tensor {name} has shape {list(state[name].shape)}, but {METADATA_FILE} "
                f"({model.n_items} items, layers {list(model.layer_sizes)}) needs {list(shape)}"
            )


def load_resume_state(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> dict[str, Any] | None:
    file = Path(path) / RESUME_FILE
    if not file.exists():
        return None
    state = _load_tensors(file, device, "the resume state")
    if not isinstance(state, dict) or not isinstance(state.get("weights"), dict):
        raise ModelUnavailable(f"{file}: not a resume state of gru4rec train")
    check_finite_weights(state["weights"], file)
    return state


def load_optimizer_state(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> list[dict[str, Any]] | None:
    file = Path(path) / OPTIMIZER_FILE
    return _load_tensors(file, device, "the optimiser state") if file.exists() else None


def _load_tensors(file: Path, device: str | torch.device, what: str) -> Any:
    """torch.load(weights_only=True), with one line a person can act on for a bad file.

    Never PyTorch's own advice: it suggests weights_only=False, which would run any code a
    tampered file carries.
    """
    try:
        return torch.load(file, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" in str(exc).lower():
            raise ModelUnavailable(
                f"{file}: cannot load {what}: the file holds pickled Python objects besides tensors, which "
                f"gru4rec never loads (they could run code); write it again with gru4rec"
            ) from None
        raise ModelUnavailable(f"{file}: cannot load {what}: damaged or not a PyTorch file ({_summary(exc)})") from None
    except FileNotFoundError:
        raise ModelUnavailable(f"{file}: not found") from None
    except Exception as exc:  # damaged bytes surface as many types (KeyError, RuntimeError, OSError, ...)
        raise ModelUnavailable(f"{file}: cannot load {what}: damaged or not a PyTorch file ({_summary(exc)})") from None


def _summary(exc: BaseException) -> str:
    """The exception's first line, without PyTorch's advice to load unsafely."""
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else ""
    if "weights_only" in first or not first:
        return type(exc).__name__
    return f"{type(exc).__name__}: {first[:200]}"
