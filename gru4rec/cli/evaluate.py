"""`gru4rec evaluate`: full-ranking offline metrics of a model (or a baseline) on a test session file."""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any



log = logging.getLogger(__name__)

PROTOCOL_HELP = (
    "next: predict every next event (the reference protocol); last: only each session's last event, "
    "from all the events before it; remaining: any later item of the session counts as a hit "
    "(MRR/NDCG from the best-ranked remaining item)"
)


def add_evaluation_options(p: argparse.ArgumentParser) -> None:
    """Options shared by `evaluate` and `compare` (one definition, so they always agree)."""
    p.add_argument("--cutoffs", type=int, nargs="+", default=[1, 5, 10, 20], metavar="K", help="list lengths k")
    p.add_argument(
        "--ties", choices=["conservative", "standard", "median"], default="conservative",
        help="rank of a target tied with other items: conservative counts every tie as above it "
        "(the published protocol), standard as below it, median halfway",
    )
    p.add_argument("--protocol", choices=["next", "last", "remaining"], default="next", help=PROTOCOL_HELP)
    p.add_argument(
        "--exclude-seen", action="store_true",
        help="never recommend items already clicked in the session (a repeat click then counts as a miss)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=512, help="sessions evaluated at once")


def register(subparsers, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "evaluate",
        parents=[common],
        help="measure Recall/MRR/NDCG/coverage/popularity@k of a model or baseline on a test file",
        description=(
            "Replay every test session event by event from a fresh state and rank all training items "
            "for each prediction (full ranking, no sampling). Test events with items the model never "
            "saw are dropped and counted. Metrics are averaged over predictions; a breakdown by session "
            "length and position is printed and included in the JSON. With --baseline NAME the first "
            "argument is the TRAIN file the baseline is fitted on instead of a model directory. "
            "Baselines: pop, spop, itemknn, sr, vsknn, stan (parameters: NAME:key=value,...)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL_DIR|TRAIN", help="model directory written by `gru4rec train` (or TRAIN with --baseline)")
    p.add_argument("test", metavar="TEST", help="test session file (TSV or Parquet)")
    p.add_argument("--baseline", metavar="NAME", help="evaluate this baseline fitted on TRAIN instead of a model")
    add_evaluation_options(p)
    p.add_argument("--json", metavar="OUT.json", help="also write the results as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="also plot each metric against k")
    p.set_defaults(func=run)


@dataclass
class Scored:
    """Something to evaluate: a SessionScorer with its item map and training counts."""

    label: str
    scorer: Any
    item_map: Any
    item_counts: np.ndarray
    info: dict[str, Any]


def load_model(path: str, device, label: str | None = None) -> Scored:
    """A trained model directory as a scorer."""
    from gru4rec.evaluation.scorers import model_scorer
    from gru4rec.model.architectures import ALL
    from gru4rec.model.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(path, device, architectures=ALL)
    epochs = (checkpoint.metadata.get("training") or {}).get("epochs") or []
    info = {
        "model": str(path), "architecture": checkpoint.architecture, "hyperparameters": checkpoint.hyperparameters,
        "train_seconds": round(sum(float(e.get("seconds", 0.0)) for e in epochs), 1),
    }
    return Scored(label or str(path), model_scorer(checkpoint.model), checkpoint.item_map, checkpoint.item_counts, info)


def fit_baseline_scorer(spec: str, train, label: str | None = None) -> Scored:
    """A baseline fitted on a loaded training set (gru4rec.evaluation.baselines.load_train_set)."""
    from gru4rec.evaluation.baselines import fit_baseline

    start = time.perf_counter()
    baseline = fit_baseline(spec, train)
    seconds = time.perf_counter() - start
    info = {"baseline": baseline.name, "baseline_params": baseline.params(), "fit_seconds": round(seconds, 3)}
    log.info("fitted %s in %.2f s", spec, seconds)
    return Scored(label or spec, baseline, train.item_map, train.item_counts, info)


def evaluate_scored(scored: Scored, test: str, args: argparse.Namespace, device, events=None):
    """Evaluate with the shared options; returns the result and the seconds it took.

    `events` (data.read_events(test)) is the test file read once for several scorers.
    """
    from gru4rec.evaluation.protocol import evaluate_file

    start = time.perf_counter()
    result = evaluate_file(
        scored.scorer, test, scored.item_map, item_counts=scored.item_counts, events=events,
        cutoffs=args.cutoffs, ties=args.ties, batch_size=args.batch_size, device=device,
        protocol=args.protocol, exclude_seen=args.exclude_seen,
    )
    return result, time.perf_counter() - start


def check_options(args: argparse.Namespace) -> None:
    """Fail on option values that are wrong whatever the model, before anything is loaded."""
    import sys

    from gru4rec.foundation.errors import UserError
    from gru4rec.evaluation.protocol import check_cutoffs

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    check_cutoffs(args.cutoffs, sys.maxsize)  # positive; the catalogue bound is checked per model


def run(args: argparse.Namespace) -> int:
    from gru4rec.foundation.atomic import atomic_file
    from gru4rec.evaluation.reports import format_breakdown, format_metrics_table, plot_metrics
    from gru4rec.foundation.devices import resolve_device

    check_options(args)
    device = resolve_device(args.device)
    if args.baseline:
        from gru4rec.evaluation.baselines import load_train_set, parse_baseline_spec

        parse_baseline_spec(args.baseline)  # an unknown name fails before the training file is read
        scored = fit_baseline_scorer(args.baseline, load_train_set(args.model))
        scored.info["train"] = str(args.model)
    else:
        scored = load_model(args.model, device)
    result, seconds = evaluate_scored(scored, args.test, args, device)
    report = {
        **scored.info, "test": str(args.test), **result.to_dict(),
        "seconds": round(seconds, 3), "events_per_s": round(result.n_events / max(seconds, 1e-9), 1),
    }
    kmax = max(result.cutoffs)
    print(format_metrics_table(result.metrics, result.cutoffs))
    print()
    print(format_breakdown(report["breakdown"], kmax))
    print()
    print(
        f"{result.n_events} predictions ({result.protocol} protocol, {result.ties} ties"
        f"{', seen items excluded' if result.exclude_seen else ''}) in {result.n_sessions} sessions, "
        f"{seconds:.1f} s; {result.n_unknown} test events with unknown items dropped"
    )
    if args.json:
        with atomic_file(args.json) as fh:
            json.dump(report, fh, indent=2)
    if args.plot:
        plot_metrics({scored.label: result.metrics}, result.cutoffs, args.plot, title=f"{scored.label} on {Path(args.test).name}")
    return 0

