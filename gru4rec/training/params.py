"""Hyper-parameters: one typed, validated object using the reference implementation's names.

Sources, later ones winning: the defaults below (the reference's), a built-in parameter set or a
TOML/JSON file (`--params`), and `--set key=value` overrides.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from gru4rec.foundation.errors import UserError

log = logging.getLogger(__name__)

LOSSES = ("cross-entropy", "bpr-max", "top1-max", "bpr", "top1")
LOSS_ALIASES = {"xe": "cross-entropy", "ce": "cross-entropy", "bprmax": "bpr-max", "top1max": "top1-max"}
OPTIMIZERS = ("adagrad", "adam")


@dataclass(frozen=True)
class HyperParams:
    """GRU4Rec hyper-parameters; defaults are the reference implementation's."""

    loss: str = "cross-entropy"
    layers: tuple[int, ...] = (100,)
    batch_size: int = 64
    dropout_p_embed: float = 0.0  # probability of DROPPING an input embedding unit
    dropout_p_hidden: float = 0.0  # probability of DROPPING a GRU output unit
    learning_rate: float = 0.05
    momentum: float = 0.0
    n_sample: int = 2048  # extra negatives shared by the mini-batch
    sample_alpha: float = 0.5  # negatives drawn proportional to support ** sample_alpha
    bpreg: float = 1.0  # BPR-max score regularisation
    elu_param: float = 0.5  # BPR-max: ELU on the scores when > 0
    logq: float = 0.0  # cross-entropy: weight of the logQ correction
    embedding: int = 0  # size of a separate input embedding (0: none)
    constrained_embedding: bool = True  # input embedding shared with the output weights
    n_epochs: int = 10
    optimizer: str = "adagrad"  # adagrad (reference: Adagrad + momentum, sparse rows) or adam
    sample_cache_size: int = 10_000_000  # negatives pre-drawn at once (device memory: 8 B each)

    def __post_init__(self) -> None:
        loss = LOSS_ALIASES.get(self.loss, self.loss)
        object.__setattr__(self, "loss", loss)
        object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        _check(loss in LOSSES, "loss", loss, f"one of {', '.join(LOSSES)}")
        _check(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, f"one of {', '.join(OPTIMIZERS)}")
        _check(len(self.layers) > 0 and all(x > 0 for x in self.layers), "layers", self.layers, "one or more positive sizes")
        _check(self.batch_size >= 1, "batch_size", self.batch_size, ">= 1")
        for name in ("dropout_p_embed", "dropout_p_hidden"):
            value = getattr(self, name)
            _check(0.0 <= value < 1.0, name, value, "a drop probability in [0, 1)")
        _check(self.learning_rate > 0, "learning_rate", self.learning_rate, "> 0")
        _check(0.0 <= self.momentum < 1.0, "momentum", self.momentum, "in [0, 1)")
        _check(self.n_sample >= 0, "n_sample", self.n_sample, ">= 0")
        _check(0.0 <= self.sample_alpha <= 1.0, "sample_alpha", self.sample_alpha, "in [0, 1]")
        _check(self.bpreg >= 0, "bpreg", self.bpreg, ">= 0")
        _check(self.elu_param >= 0, "elu_param", self.elu_param, ">= 0")
        _check(self.logq >= 0, "logq", self.logq, ">= 0")
        _check(self.embedding >= 0, "embedding", self.embedding, ">= 0")
        _check(self.n_epochs >= 1, "n_epochs", self.n_epochs, ">= 1")
        _check(self.sample_cache_size >= 1, "sample_cache_size", self.sample_cache_size, ">= 1")
        if self.constrained_embedding and self.embedding > 0:
            log.warning("embedding=%d is ignored: constrained_embedding=true shares the output weights as input embedding", self.embedding)
        if self.optimizer == "adam" and self.momentum > 0:
            log.warning("momentum=%s is ignored by optimizer=adam", self.momentum)

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

    def replace(self, **changes: Any) -> HyperParams:
        return from_mapping({**self.to_dict(), **changes})


def _check(ok: bool, name: str, value: Any, expected: str) -> None:
    if not ok:
        raise UserError(f"parameter {name}={value!r} is invalid: expected {expected}")


FIELDS = {f.name: f for f in dataclasses.fields(HyperParams)}


def from_mapping(values: dict[str, Any], source: str = "parameters") -> HyperParams:
    """Build from a dict, rejecting unknown names (with a suggestion) and ill-typed values."""
    unknown = [k for k in values if k not in FIELDS]
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, FIELDS, n=1)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise UserError(f"{source}: unknown parameter(s) {', '.join(hints)}; known: {', '.join(FIELDS)}")
    typed = {k: _coerce(k, v, source) for k, v in values.items()}
    return HyperParams(**typed)


def _coerce(name: str, value: Any, source: str) -> Any:
    kind = FIELDS[name].type
    try:
        if kind == "tuple[int, ...]":
            if isinstance(value, str):
                value = [v for v in value.replace("[", "").replace("]", "").split(",") if v.strip()]
            elif isinstance(value, int):
                value = [value]
            return tuple(_strict_int(v) for v in value)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
                return value.lower() in ("true", "1", "yes")
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError("not a boolean")
        if kind == "int":
            return _strict_int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError("not a number")
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise UserError(f"{source}: parameter {name}={value!r} is not a valid {kind}") from None


def _strict_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("not an integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("not an integer")
        return int(value)
    return int(str(value).strip())


def builtin_names() -> list[str]:
    """Built-in parameter sets (gru4rec/training/presets/*.toml)."""
    return sorted(
        p.name[: -len(".toml")]
        for p in resources.files("gru4rec.training.presets").iterdir()
        if p.name.endswith(".toml")
    )


def load_params(name_or_file: str | None = None, overrides: list[str] | None = None) -> HyperParams:
    """Defaults, then a built-in set or a TOML/JSON file, then `key=value` overrides."""
    values: dict[str, Any] = {}
    if name_or_file:
        values.update(_read_params_source(name_or_file))
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected key=value")
        values[key] = _parse_override(raw.strip())
    return from_mapping(values, source=f"parameters ({name_or_file or 'defaults'})")


def _parse_override(raw: str) -> Any:
    """Read a value as TOML would (numbers, booleans, lists), falling back to the raw string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _read_params_source(name_or_file: str) -> dict[str, Any]:
    path = Path(name_or_file)
    if name_or_file in builtin_names() and not path.exists():
        text = resources.files("gru4rec.training.presets").joinpath(f"{name_or_file}.toml").read_text()
        return tomllib.loads(text)
    if not path.exists():
        raise UserError(
            f"--params {name_or_file!r}: neither a built-in parameter set ({', '.join(builtin_names())}) nor an existing file"
        )
    try:
        if path.suffix == ".json":
            data = json.loads(path.read_text())
        else:
            data = tomllib.loads(path.read_text())
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot parse parameter file ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a parameter file must hold a table/object of name = value")
    return data


def save_params(params: HyperParams, path: str | Path) -> None:
    """Write a TOML parameter file that `--params` accepts."""
    from gru4rec.foundation.atomic import atomic_file

    lines = []
    for key, value in params.to_dict().items():
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, str):
            lines.append(f"{key} = {json.dumps(value)}")
        else:
            lines.append(f"{key} = {json.dumps(value)}")
    with atomic_file(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")
