"""Hyper-parameters as users write them: one flat set of the reference's names, split in two.

A `--params` file (or a built-in set, or `--set key=value`) names values of two kinds: what defines
the network (gru4rec.model.config.ModelConfig, saved with the model) and how it is trained
(gru4rec.training.settings.TrainingSettings, saved as training metadata). HyperParams holds one of
each; the network only ever sees the first and the training step the second.

Sources, later ones winning: the defaults (the reference's), a built-in parameter set or a
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
from typing import Any, ClassVar

from gru4rec.foundation.errors import UserError
from gru4rec.foundation.values import parse_value
from gru4rec.model.config import ARCHITECTURE, MODEL_FIELDS, ModelConfig
from gru4rec.training import sasrec_params
from gru4rec.training.settings import TRAINING_FIELDS, TrainingSettings

log = logging.getLogger(__name__)

# Every parameter by its reference name, in the order files and tables show them.
ORDER = (
    "loss", "layers", "batch_size", "dropout_p_embed", "dropout_p_hidden", "learning_rate", "momentum",
    "n_sample", "sample_alpha", "bpreg", "elu_param", "logq", "embedding", "constrained_embedding",
    "n_epochs", "optimizer", "sample_cache_size",
)
FIELDS = {
    **{f.name: f for f in dataclasses.fields(ModelConfig)},
    **{f.name: f for f in dataclasses.fields(TrainingSettings)},
}
assert set(ORDER) == set(FIELDS)


@dataclass(frozen=True, init=False)
class HyperParams:
    """The network's configuration and the training settings, built from reference names.

    `HyperParams(layers=(200,), loss="bpr-max")` sorts each name into its part; a parameter can be
    read by its name too (`params.batch_size` is `params.training.batch_size`).
    """

    architecture: ClassVar[str] = ARCHITECTURE
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingSettings = field(default_factory=TrainingSettings)

    def __init__(self, model: ModelConfig | None = None, training: TrainingSettings | None = None, **values: Any) -> None:
        unknown = sorted(set(values) - set(FIELDS))
        if unknown:
            raise TypeError(f"unknown parameter(s): {', '.join(unknown)}")
        model = model or ModelConfig()
        training = training or TrainingSettings()
        model_values = {k: v for k, v in values.items() if k in MODEL_FIELDS}
        training_values = {k: v for k, v in values.items() if k in TRAINING_FIELDS}
        object.__setattr__(self, "model", dataclasses.replace(model, **model_values) if model_values else model)
        object.__setattr__(self, "training", dataclasses.replace(training, **training_values) if training_values else training)

    def __getattr__(self, name: str) -> Any:
        if name in MODEL_FIELDS or name == "embedding_mode":
            return getattr(self.model, name)
        if name in TRAINING_FIELDS:
            return getattr(self.training, name)
        raise AttributeError(name)

    def to_dict(self) -> dict[str, Any]:
        """Every parameter by name, in the usual order (what parameter files and metadata show)."""
        merged = {**self.model.to_dict(), **self.training.to_dict()}
        return {name: merged[name] for name in ORDER}

    def replace(self, **changes: Any) -> HyperParams:
        return from_mapping({**self.to_dict(), **changes})

    def __repr__(self) -> str:
        return "HyperParams(" + ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items()) + ")"


def from_mapping(values: dict[str, Any], source: str = "parameters") -> HyperParams | sasrec_params.SASRecParams:
    """Build from a dict, rejecting unknown names (with a suggestion) and ill-typed values.

    `architecture = "sasrec"` among the values gives SASRec's parameters instead
    (gru4rec.training.sasrec_params); "gru4rec", the default, these.
    """
    architecture = values.get("architecture", ARCHITECTURE)
    if architecture != ARCHITECTURE:
        if architecture != sasrec_params.ARCHITECTURE:
            raise UserError(f"{source}: unknown architecture {architecture!r}: use gru4rec or sasrec")
        return sasrec_params.from_mapping(values, source)
    values = {k: v for k, v in values.items() if k != "architecture"}
    check_names(values, FIELDS, source)
    typed = {k: coerce(k, v, source) for k, v in values.items()}
    return HyperParams(**typed)


def check_names(values: dict[str, Any], fields: dict[str, Any], source: str) -> None:
    """Refuse names that are not parameters, suggesting the closest known name."""
    unknown = [k for k in values if k not in fields]
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, fields, n=1)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise UserError(f"{source}: unknown parameter(s) {', '.join(hints)}; known: {', '.join(fields)}")


def coerce(name: str, value: Any, source: str, fields: dict[str, Any] = FIELDS) -> Any:
    """`value` as the type of the dataclass field `fields[name]` (tuple of ints, bool, int, float, str)."""
    kind = fields[name].type
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


def load_params(
    name_or_file: str | None = None, overrides: list[str] | None = None
) -> HyperParams | sasrec_params.SASRecParams:
    """Defaults, then a built-in set or a TOML/JSON file, then `key=value` overrides."""
    values: dict[str, Any] = {}
    if name_or_file:
        values.update(_read_params_source(name_or_file))
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected key=value")
        values[key] = parse_value(raw.strip())
    return from_mapping(values, source=f"parameters ({name_or_file or 'defaults'})")


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


def save_params(params: HyperParams | sasrec_params.SASRecParams, path: str | Path) -> None:
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
