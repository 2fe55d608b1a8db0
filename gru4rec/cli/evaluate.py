"""`gru4rec evaluate`: full-ranking offline metrics of a model (or a baseline) on a test session file."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

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


def evaluation_options(args: argparse.Namespace):
    """The shared evaluation options from the command line, checked before anything is loaded."""
    from gru4rec.evaluation.compare import EvalOptions

    options = EvalOptions(tuple(args.cutoffs), args.ties, args.protocol, args.exclude_seen, args.batch_size)
    options.check()
    return options


def run(args: argparse.Namespace) -> int:
    from gru4rec.evaluation.compare import baseline_entry, evaluate_entry, model_entry
    from gru4rec.foundation.devices import resolve_device

    options = evaluation_options(args)
    device = resolve_device(args.device)
    _check_outputs(args)
    if args.baseline:
        from gru4rec.evaluation.baselines import load_train_set, parse_baseline_spec

        parse_baseline_spec(args.baseline)  # an unknown name fails before the training file is read
        entry = baseline_entry(args.baseline, load_train_set(args.model))
        entry.info["train"] = str(args.model)
    else:
        entry = model_entry(args.model, device)
    report = {**evaluate_entry(entry, args.test, options, device), "test": str(args.test)}
    _print_report(report)
    _write_outputs(args, entry.label, report)
    return 0


def _check_outputs(args: argparse.Namespace) -> None:
    """--json and --plot must be writable files: found out before the evaluation, not after it."""
    from gru4rec.foundation.atomic import check_output_file
    from gru4rec.foundation.errors import UserError

    if args.json and args.plot and Path(args.json).resolve() == Path(args.plot).resolve():
        raise UserError(f"--json and --plot both name {args.json}; give them different files")
    for option, path in (("--json", args.json), ("--plot", args.plot)):
        if path:
            check_output_file(path, option)


def _print_report(report: dict) -> None:
    from gru4rec.evaluation.reports import format_breakdown, format_metrics_table

    cutoffs = report["cutoffs"]
    print(format_metrics_table(report["metrics"], cutoffs))
    print()
    print(format_breakdown(report["breakdown"], max(cutoffs)))
    print()
    print(
        f"{report['n_events']} predictions ({report['protocol']} protocol, {report['ties']} ties"
        f"{', seen items excluded' if report['exclude_seen'] else ''}) in {report['n_sessions']} sessions, "
        f"{report['seconds']:.1f} s; {report['n_unknown_dropped']} test events with unknown items dropped"
    )


def _write_outputs(args: argparse.Namespace, label: str, report: dict) -> None:
    from gru4rec.evaluation.reports import plot_metrics
    from gru4rec.foundation.atomic import atomic_file

    if args.json:
        with atomic_file(args.json) as fh:
            json.dump(report, fh, indent=2)
    if args.plot:
        plot_metrics({label: report["metrics"]}, report["cutoffs"], args.plot, title=f"{label} on {Path(args.test).name}")
