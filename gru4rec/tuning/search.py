"""Hyper-parameter search with optuna: train on TRAIN, select on VALID by a ranking metric.

Search-space file (TOML). Every key is a HyperParams name (see `gru4rec train --help`):

    loss = "cross-entropy"          # a plain value fixes the parameter in every trial

    [learning_rate]                 # a table makes it a search dimension
    type = "float"                  # float: low, high; optional log = true or step = 0.05
    low = 0.02
    high = 0.5
    log = true

    [batch_size]
    type = "int"                    # int: low, high; optional step or log = true
    low = 32
    high = 128
    step = 16

    [layers]
    type = "categorical"            # categorical: choices (lists allowed: [[100], [200, 200]])
    choices = [[64], [128], [256]]

Parameters neither fixed nor searched come from `--params BASE` (or the reference defaults).
Built-in spaces live in gru4rec/tuning/spaces/*.toml and can be named without the suffix
(`--space xe`, `--space bprmax`).

Every trial trains a fresh model in a temporary directory (gru4rec.training.trainer.train, validating after
each epoch) and scores the best epoch's metric on VALID. The study lives in an optuna storage
(SQLite by default): running the same command again continues it, up to --trials finished trials;
trials left running by an interrupted run are marked failed and retried with the same parameters.
One process per study.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from gru4rec.foundation.atomic import OutputKind, check_output_dir, claim_dir, scratch_dir
from gru4rec.foundation.errors import UserError
from gru4rec.training.params import HyperParams, from_mapping

log = logging.getLogger(__name__)

SPACE_SUFFIX = ".toml"
MAX_SEED = 2**32 - 1
TUNE_OUTPUT = OutputKind(
    "tuning directory", "gru4rec tune",
    frozenset({"study.db", "study.db-journal", "study.db-wal", "study.db-shm", "trials.csv", "tune.json", "best_params.toml"}),
    "study.db",
)
DIMENSION_TYPES = ("float", "int", "categorical")


@dataclass(frozen=True)
class Dimension:
    """One searched parameter."""

    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial) -> Any:
        """Draw this parameter for an optuna trial (categorical lists travel as JSON strings)."""
        if self.type == "float":
            value = trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)
            return _tidy(value)
        if self.type == "int":
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1, log=self.log)
        encoded = [_encode(c) for c in self.choices]
        return _decode(trial.suggest_categorical(self.name, encoded))


@dataclass(frozen=True)
class SearchSpace:
    source: str
    fixed: dict[str, Any] = field(default_factory=dict)
    dimensions: tuple[Dimension, ...] = ()
    base: Any = None  # the parameters the space leaves alone (HyperParams or SASRecParams)


def _tidy(value: Any) -> Any:
    """0.15 for optuna's stepped 0.15000000000000002; other values exactly as drawn."""
    if isinstance(value, float):
        short = round(value, 10)
        return short if abs(short - value) < 1e-12 else value
    return value


def _encode(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, list | dict) else value


def _decode(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "[{":
        return json.loads(value)
    return value


def builtin_spaces() -> list[str]:
    return sorted(
        p.name[: -len(SPACE_SUFFIX)] for p in resources.files("gru4rec.tuning.spaces").iterdir() if p.name.endswith(SPACE_SUFFIX)
    )


def _read_space_text(name_or_file: str) -> tuple[str, str]:
    path = Path(name_or_file)
    if not path.exists() and name_or_file in builtin_spaces():
        return f"built-in space {name_or_file}", resources.files("gru4rec.tuning.spaces").joinpath(name_or_file + SPACE_SUFFIX).read_text()
    if not path.exists():
        raise UserError(
            f"--space {name_or_file!r}: neither a space file nor a built-in space ({', '.join(builtin_spaces())})"
        )
    if path.is_dir():
        raise UserError(f"--space {path}: is a directory, expected a TOML search-space file")
    try:
        return str(path), path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--space {path}: cannot read ({exc})") from None


def load_space(name_or_file: str, base: HyperParams | None = None) -> SearchSpace:
    """Parse and check a search-space file: known names, well-formed ranges, every bound valid."""
    source, text = _read_space_text(name_or_file)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{source}: not valid TOML ({exc})") from None
    architecture = data.get("architecture", HyperParams.architecture)
    base = base or from_mapping({"architecture": architecture}, source=source)
    if architecture != base.architecture:
        raise UserError(f"{source}: a {architecture} space, but --params names {base.architecture} parameters")
    known = set(base.to_dict()) | {"architecture"}
    for name in data:
        if name not in known:  # raises the usual 'unknown parameter' message
            from_mapping({"architecture": architecture, name: None}, source=source)
    fixed = {name: spec for name, spec in data.items() if not isinstance(spec, dict)}
    dims = []
    for name, spec in data.items():
        if isinstance(spec, dict):
            dim, values = _dimension(name, spec, f"{source}: [{name}]")
            _check_values(base, fixed, dim, values, f"{source}: [{name}]")
            dims.append(dim)
    if not dims:
        raise UserError(f"{source}: nothing to search (add at least one [name] table with a type)")
    try:
        base.replace(**fixed)
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from None
    return SearchSpace(source, fixed, tuple(dims), base)


_ALLOWED_KEYS = {
    "float": {"type", "low", "high", "log", "step"},
    "int": {"type", "low", "high", "log", "step"},
    "categorical": {"type", "choices"},
}


def _dimension(name: str, spec: dict[str, Any], where: str) -> tuple[Dimension, list[Any]]:
    """One [name] table as a Dimension, with the extreme values the search can produce."""
    kind = spec.get("type")
    if kind not in DIMENSION_TYPES:
        raise UserError(f"{where}: type must be one of {', '.join(DIMENSION_TYPES)}, got {kind!r}")
    allowed = _ALLOWED_KEYS[kind]
    extra = sorted(set(spec) - allowed)
    if extra:
        raise UserError(f"{where}: unexpected key(s) {', '.join(extra)} for type {kind} (allowed: {', '.join(sorted(allowed))})")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise UserError(f"{where}: categorical needs a non-empty list `choices`")
        return Dimension(name, kind, choices=tuple(choices)), list(choices)
    return _range_dimension(name, kind, spec, where)


def _range_dimension(name: str, kind: str, spec: dict[str, Any], where: str) -> tuple[Dimension, list[Any]]:
    low, high, step, use_log = spec.get("low"), spec.get("high"), spec.get("step"), bool(spec.get("log", False))
    number = (int,) if kind == "int" else (int, float)
    for key, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, number):
            raise UserError(f"{where}: `{key}` must be {'an integer' if kind == 'int' else 'a number'}, got {value!r}")
    if not low < high:
        raise UserError(f"{where}: need low < high, got low={low}, high={high}")
    if step is not None and (isinstance(step, bool) or not isinstance(step, number) or step <= 0):
        raise UserError(f"{where}: `step` must be a positive {'integer' if kind == 'int' else 'number'}, got {step!r}")
    if use_log and step is not None and step != 1:
        raise UserError(f"{where}: `log` and `step` cannot be combined")
    if use_log and low <= 0:
        raise UserError(f"{where}: a log range needs low > 0, got {low}")
    if kind == "float":
        low, high = float(low), float(high)
    return Dimension(name, kind, low=low, high=high, step=step, log=use_log), [low, high]


def _check_values(base: HyperParams, fixed: dict[str, Any], dim: Dimension, values: list[Any], where: str) -> None:
    """Every value the search can produce must be a valid parameter."""
    for value in values:
        try:
            base.replace(**{**fixed, dim.name: value})
        except UserError as exc:
            raise UserError(f"{where}: value {value!r} is not a valid {dim.name} ({exc})") from None


@dataclass
class TuneResult:
    best_params: HyperParams
    best_value: float
    best_trial: int
    trials: list[dict[str, Any]]
    metric: str


def _configure_optuna_logging() -> None:
    import optuna

    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    optuna.logging.set_verbosity(logging.WARNING if logging.getLogger().level > logging.INFO else logging.INFO)


def _recover_interrupted(study) -> None:
    """Trials left RUNNING by a killed run (or FAILed by an interrupt) are retried once with the same parameters."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    for t in trials:
        if t.state == TrialState.RUNNING:
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            log.warning("trial %d was interrupted: marked failed", t.number)
        if t.state in (TrialState.RUNNING, TrialState.FAIL) and t.number not in retried and t.params:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
            log.info("trial %d will be retried with the same parameters", t.number)


def tune(
    train_path: str | os.PathLike[str],
    valid_path: str | os.PathLike[str],
    space: SearchSpace,
    n_trials: int,
    out_dir: str | os.PathLike[str],
    *,
    storage: str | None = None,
    study_name: str = "gru4rec",
    metric: str = "mrr@20",
    base: HyperParams | None = None,
    timeout: float | None = None,
    device: str = "auto",
    seed: int = 42,
    eval_batch_size: int = 512,
) -> TuneResult:
    """Run (or continue) the study until it has n_trials finished trials; write the best parameters."""
    from optuna.trial import TrialState

    out = check_output_dir(out_dir, TUNE_OUTPUT, replace=False)
    _check_inputs(train_path, valid_path, n_trials, timeout, metric, device, seed)
    base = base or space.base or HyperParams()
    if storage is None:  # else the study opens first: a bad --storage leaves no empty --out behind
        claim_dir(out, TUNE_OUTPUT)
    storage = storage or f"sqlite:///{out / 'study.db'}"
    study = _open_study(storage, study_name, seed, metric, space)
    claim_dir(out, TUNE_OUTPUT)
    train_options = dict(valid_path=valid_path, device=device, seed=seed, metric=metric, eval_batch_size=eval_batch_size)
    objective = _objective(train_path, space, base, out, metric, train_options)
    done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.get_trials(deepcopy=False))
    todo = n_trials - done
    if todo > 0:
        log.info("study %r: %d finished trial(s), running %d more (%s)", study_name, done, todo, storage)
        study.optimize(objective, n_trials=todo, timeout=timeout, gc_after_trial=True)
    else:
        log.info("study %r already has %d finished trial(s) (>= --trials %d): nothing to run", study_name, done, n_trials)
    return write_outputs(study, out, metric)


def _check_inputs(train_path, valid_path, n_trials: int, timeout: float | None, metric: str, device: str, seed: int) -> None:
    """Fail on bad options and files now, not as a string of failed trials."""
    from gru4rec.data.sessions import load_eval_data, load_training_data
    from gru4rec.evaluation.protocol import check_metric
    from gru4rec.foundation.devices import resolve_device

    if n_trials < 1:
        raise UserError(f"--trials must be >= 1, got {n_trials}")
    if timeout is not None and timeout <= 0:
        raise UserError(f"--timeout must be > 0 seconds, got {timeout}")
    if not 0 <= seed <= MAX_SEED:  # optuna's sampler takes 32-bit seeds
        raise UserError(f"--seed must be an integer from 0 to {MAX_SEED}, got {seed}")
    check_metric(metric)
    resolve_device(device)
    _, item_map, _, _ = load_training_data(train_path)
    check_metric(metric, len(item_map))  # the same rule the trials' training applies
    load_eval_data(valid_path, item_map)


def _open_study(storage: str, study_name: str, seed: int, metric: str, space: SearchSpace):
    """Create or continue the study; interrupted trials are queued again."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    _configure_optuna_logging()
    try:
        study = optuna.create_study(
            study_name=study_name, storage=storage, direction="maximize", load_if_exists=True,
            sampler=optuna.samplers.TPESampler(seed=(seed + len(_existing_trials(storage, study_name))) % 2**32),
        )
    except (ValueError, ImportError, optuna.exceptions.OptunaError, SQLAlchemyError) as exc:
        raise UserError(f"--storage {storage}: cannot open the study ({_first_line(exc)})") from None
    previous = study.user_attrs.get("metric")
    if previous is not None and previous != metric:
        raise UserError(f"study {study_name!r} in {storage} selects by {previous}; rerun with --metric {previous} or a new --out/--study-name")
    study.set_user_attr("metric", metric)
    study.set_user_attr("space", space.source)
    _recover_interrupted(study)
    return study


def _objective(train_path, space: SearchSpace, base: HyperParams, out: Path, metric: str, train_options: dict[str, Any]):
    """The function optuna maximises: train one trial's parameters, score its best epoch on VALID."""
    import optuna

    from gru4rec.training.run import train

    def objective(trial: optuna.Trial) -> float:
        values = {d.name: d.suggest(trial) for d in space.dimensions}
        params = base.replace(**space.fixed, **values)
        start = time.perf_counter()
        with scratch_dir(out / "trial") as tmp:
            try:
                history = train(train_path, tmp / "model", params, **train_options)
            except UserError as exc:  # e.g. diverged: a bad point of the space, not a bad run
                trial.set_user_attr("error", str(exc))
                log.warning("trial %d failed: %s", trial.number, exc)
                raise optuna.TrialPruned(str(exc)) from None
        scores = [h.valid[metric] for h in history]
        trial.set_user_attr("best_epoch", int(max(range(len(scores)), key=scores.__getitem__)) + 1)
        trial.set_user_attr("train_seconds", round(time.perf_counter() - start, 1))
        trial.set_user_attr("events_per_s", round(sum(h.events_per_s for h in history) / len(history)))
        trial.set_user_attr("params", params.to_dict())
        return max(scores)

    return objective


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _existing_trials(storage: str, study_name: str) -> list:
    import optuna

    try:
        return optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False)
    except (KeyError, ValueError, ImportError, optuna.exceptions.OptunaError):
        return []


def trial_rows(study, metric: str) -> list[dict[str, Any]]:
    """One row per trial: number, state, metric, best epoch, seconds and the searched parameters."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        row = {
            "trial": t.number,
            "state": t.state.name.lower(),
            metric: t.value if t.value is not None else math.nan,
            "best_epoch": t.user_attrs.get("best_epoch"),
            "seconds": t.user_attrs.get("train_seconds"),
        }
        row.update({name: _decode(value) for name, value in t.params.items()})
        row.update({k: _tidy(v) for k, v in row.items() if k in t.params})
        if "error" in t.user_attrs:
            row["error"] = t.user_attrs["error"]
        rows.append(row)
    return rows


def write_outputs(study, out: Path, metric: str) -> TuneResult:
    """best_params.toml (for `gru4rec train --params`), trials.csv and tune.json, each atomically."""
    import pandas as pd
    from optuna.trial import TrialState

    from gru4rec.foundation.atomic import atomic_file
    from gru4rec.training.params import save_params

    rows = trial_rows(study, metric)
    with atomic_file(out / "trials.csv") as fh:
        pd.DataFrame(rows).to_csv(fh, index=False)
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not complete:
        raise UserError(f"no trial finished successfully (see {out / 'trials.csv'}); widen or fix the search space")
    best = max(complete, key=lambda t: t.value)
    # train for exactly the selected epoch: `gru4rec train --params best_params.toml` (same seed)
    # then reproduces the selected model without needing VALID
    values = {k: _tidy(v) for k, v in best.user_attrs["params"].items()}
    best_params = from_mapping({**values, "n_epochs": best.user_attrs["best_epoch"]}, source=f"trial {best.number}")
    save_params(best_params, out / "best_params.toml")
    summary = {
        "metric": metric, "best_value": best.value, "best_trial": best.number,
        "best_epoch": best.user_attrs.get("best_epoch"), "best_params": best_params.to_dict(),
        "n_trials": len(rows), "n_complete": len(complete), "space": study.user_attrs.get("space"),
    }
    with atomic_file(out / "tune.json") as fh:
        json.dump(summary, fh, indent=2)
    return TuneResult(best_params, float(best.value), best.number, rows, metric)
