"""Evaluating models and baselines side by side: what `gru4rec evaluate` and `gru4rec compare` run.

An Entry is anything to evaluate (a trained model directory or a fitted baseline) as a
SessionScorer with its item map and training counts. Every entry of a comparison is evaluated on
the same test file (read once) with the same options, and the comparison is written as Markdown,
JSON and a plot.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gru4rec.data.sessions import ItemMap, read_events
from gru4rec.evaluation.baselines import TrainSet, fit_baseline, load_train_set, parse_baseline_spec
from gru4rec.evaluation.protocol import DEFAULT_CUTOFFS, EvalResult, check_cutoffs, evaluate_file
from gru4rec.evaluation.scorers import model_scorer
from gru4rec.evaluation.reports import comparison_markdown, plot_metrics
from gru4rec.foundation.atomic import OutputKind, atomic_dir
from gru4rec.foundation.devices import resolve_device
from gru4rec.foundation.errors import UserError
from gru4rec.model.architectures import ALL
from gru4rec.model.checkpoint import load_checkpoint

log = logging.getLogger(__name__)


@dataclass
class Entry:
    """Something to evaluate: a SessionScorer with its item map and training counts."""

    label: str
    scorer: Any
    item_map: ItemMap
    item_counts: np.ndarray
    info: dict[str, Any]


@dataclass(frozen=True)
class EvalOptions:
    """The evaluation options `evaluate` and `compare` share (one definition, so they always agree)."""

    cutoffs: tuple[int, ...] = DEFAULT_CUTOFFS
    ties: str = "conservative"
    protocol: str = "next"
    exclude_seen: bool = False
    batch_size: int = 512

    def check(self) -> None:
        """Fail on values that are wrong whatever the model, before anything is loaded."""
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be >= 1, got {self.batch_size}")
        check_cutoffs(self.cutoffs, 2**62)  # positive; the catalogue bound is checked per model


def model_entry(path: str | os.PathLike[str], device, label: str | None = None) -> Entry:
    """A trained model directory (of any architecture) as an entry."""
    checkpoint = load_checkpoint(path, device, architectures=ALL)
    epochs = (checkpoint.metadata.get("training") or {}).get("epochs") or []
    info = {
        "model": str(path), "architecture": checkpoint.architecture, "hyperparameters": checkpoint.hyperparameters,
        "train_seconds": round(sum(float(e.get("seconds", 0.0)) for e in epochs), 3),  # as fit_seconds: a tiny run is not 0
    }
    return Entry(label or str(path), model_scorer(checkpoint.model), checkpoint.item_map, checkpoint.item_counts, info)


def baseline_entry(spec: str, train: TrainSet, label: str | None = None) -> Entry:
    """A baseline (`NAME` or `NAME:key=value,...`) fitted on a loaded training set."""
    start = time.perf_counter()
    baseline = fit_baseline(spec, train)
    seconds = time.perf_counter() - start
    info = {"baseline": baseline.name, "baseline_params": baseline.params(), "fit_seconds": round(seconds, 3)}
    log.info("fitted %s in %.2f s", spec, seconds)
    return Entry(label or spec, baseline, train.item_map, train.item_counts, info)


def evaluate_entry(entry: Entry, test: str | os.PathLike[str], options: EvalOptions, device, events=None) -> dict[str, Any]:
    """Evaluate one entry; its report: the entry's info, the result, and timings.

    `events` (read_events(test)) is the test file read once for several entries.
    """
    start = time.perf_counter()
    result: EvalResult = evaluate_file(
        entry.scorer, test, entry.item_map, item_counts=entry.item_counts, events=events,
        cutoffs=options.cutoffs, ties=options.ties, batch_size=options.batch_size, device=device,
        protocol=options.protocol, exclude_seen=options.exclude_seen,
    )
    seconds = time.perf_counter() - start
    return {
        **entry.info, **result.to_dict(),
        "seconds": round(seconds, 3), "events_per_s": round(result.n_events / max(seconds, 1e-9), 1),
    }


@dataclass
class Comparison:
    """Every entry's report, in the order given, plus what they share."""

    test: str
    train: str | None
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def metrics(self) -> dict[str, dict[str, float]]:
        return {label: report["metrics"] for label, report in self.entries.items()}

    @property
    def cutoffs(self) -> list[int]:
        return next(iter(self.entries.values()))["cutoffs"]

    def to_dict(self) -> dict[str, Any]:
        first = next(iter(self.entries.values()))
        shared = {k: first[k] for k in ("protocol", "ties", "exclude_seen", "cutoffs")}
        return {"test": self.test, "train": self.train, "entries": self.entries, **shared}

    def counts(self) -> str:
        """One line per entry: predictions, sessions, dropped events, items, seconds."""
        return "\n".join(
            f"- {label}: {e['n_events']} predictions in {e['n_sessions']} sessions, {e['n_unknown_dropped']} unknown test "
            f"events dropped, {e['n_items']} items, {e['seconds']:.1f} s"
            + (f" (+ {e['fit_seconds']:.1f} s fit)" if "fit_seconds" in e else "")
            for label, e in self.entries.items()
        )

    def markdown(self) -> str:
        first = next(iter(self.entries.values()))
        header = (
            f"# Comparison on {self.test}\n\nProtocol `{first['protocol']}`, {first['ties']} ties"
            f"{', seen items excluded' if first['exclude_seen'] else ''}; full ranking of the catalogue.\n"
        )
        return f"{header}\n{comparison_markdown(self.metrics, self.cutoffs)}\n\n{self.counts()}\n"


def check_entries(models: list[tuple[str, str]], baselines: list[str], train: str | None) -> None:
    """Fail on a bad list of entries before anything is loaded or fitted."""
    if not models and not baselines:
        raise UserError("nothing to compare: give at least one --model NAME=MODEL_DIR or --baseline NAME")
    for spec in baselines:
        parse_baseline_spec(spec)
    if baselines and not train:
        raise UserError("--baseline needs --train TRAIN (the file the baselines are fitted on)")
    labels = [name for name, _ in models] + list(baselines)
    duplicates = sorted({x for x in labels if labels.count(x) > 1})
    if duplicates:
        raise UserError(f"each compared entry needs its own name; repeated: {', '.join(duplicates)}")
    for name, path in models:  # fail on a missing directory before spending time on the others
        if not Path(path).is_dir():
            raise UserError(f"--model {name}={path}: model directory not found")


def compare(
    test: str, models: list[tuple[str, str]], baselines: list[str], train: str | None, options: EvalOptions,
    device: str = "auto",
) -> Comparison:
    """Load the models, fit the baselines on `train`, and evaluate them all on `test` (on `device`)."""
    check_entries(models, baselines, train)
    device = resolve_device(device)
    train_set = load_train_set(train) if baselines else None
    entries = []
    for name, path in models:
        entry = model_entry(path, device, label=name)
        if train_set is not None and not entry.item_map.equals(train_set.item_map):
            log.warning("%s was trained on another item set than %s: its catalogue differs from the baselines'", name, train)
        entries.append(entry)
    entries += [baseline_entry(spec, train_set) for spec in baselines]
    events = read_events(test)  # read once, evaluated against every entry
    comparison = Comparison(str(test), train)
    for entry in entries:
        log.info("evaluating %s", entry.label)
        report = evaluate_entry(entry, test, options, device, events)
        comparison.entries[entry.label] = report
        kmax = max(report["cutoffs"])
        log.info("%s: %s", entry.label, ", ".join(f"{k} {v:.4f}" for k, v in report["metrics"].items() if k.endswith(f"@{kmax}")))
    return comparison


COMPARISON_OUTPUT = OutputKind(
    "comparison directory", "gru4rec compare", frozenset({"comparison.md", "comparison.json", "comparison.png"}), "comparison.json"
)


def write_comparison(comparison: Comparison, out: Path) -> list[Path]:
    """comparison.md, comparison.json and comparison.png: the directory `out` is replaced as a whole."""
    names = ["comparison.md", "comparison.json", "comparison.png"]
    with atomic_dir(out, COMPARISON_OUTPUT) as tmp:
        (tmp / names[0]).write_text(comparison.markdown(), encoding="utf-8")
        (tmp / names[1]).write_text(json.dumps(comparison.to_dict(), indent=2), encoding="utf-8")
        first = next(iter(comparison.entries.values()))
        title = f"{first['protocol']} protocol on {Path(comparison.test).name}"
        plot_metrics(comparison.metrics, comparison.cutoffs, tmp / names[2], title=title)
    return [out / name for name in names]
