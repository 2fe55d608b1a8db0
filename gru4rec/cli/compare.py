"""`gru4rec compare`: several models and baselines on one test file, side by side."""

from __future__ import annotations

import argparse
import json
import logging

log = logging.getLogger(__name__)


def register(subparsers, common: argparse.ArgumentParser) -> None:
    from gru4rec.cli.evaluate import add_evaluation_options

    p = subparsers.add_parser(
        "compare",
        parents=[common],
        help="evaluate several models and baselines on one test file and tabulate them",
        description=(
            "Evaluate every --model and --baseline on TEST with the same protocol (as `gru4rec evaluate` "
            "does) and write DIR/comparison.md (Markdown tables), DIR/comparison.json (every metric, "
            "breakdowns, timings) and DIR/comparison.png (each metric against k); the tables are also "
            "printed. Baselines are fitted on --train, which should be the file the models were trained on."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("test", metavar="TEST", help="test session file (TSV or Parquet)")
    p.add_argument(
        "--model", action="append", default=[], metavar="NAME=MODEL_DIR",
        help="a trained model directory and the name to show for it (repeatable)",
    )
    p.add_argument(
        "--baseline", action="extend", nargs="+", default=[], metavar="NAME",
        help="baselines to fit on --train: pop spop itemknn sr vsknn stan (NAME:key=value,... to change parameters)",
    )
    p.add_argument("--train", metavar="TRAIN", help="training session file the baselines are fitted on")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for comparison.{md,json,png}")
    add_evaluation_options(p)
    p.set_defaults(func=run)


def _model_specs(specs: list[str]) -> list[tuple[str, str]]:
    from gru4rec.foundation.errors import UserError

    out = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise UserError(f"--model {spec!r}: expected NAME=MODEL_DIR")
        out.append((name.strip(), path.strip()))
    return out


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from gru4rec.foundation.atomic import atomic_file
    from gru4rec.evaluation.baselines import load_train_set, parse_baseline_spec
    from gru4rec.foundation.errors import UserError
    from gru4rec.data.sessions import read_events
    from gru4rec.cli.evaluate import check_options, evaluate_scored, fit_baseline_scorer, load_model
    from gru4rec.evaluation.reports import comparison_markdown, plot_metrics
    from gru4rec.foundation.devices import resolve_device

    check_options(args)
    models = _model_specs(args.model)
    if not models and not args.baseline:
        raise UserError("nothing to compare: give at least one --model NAME=MODEL_DIR or --baseline NAME")
    for spec in args.baseline:
        parse_baseline_spec(spec)
    if args.baseline and not args.train:
        raise UserError("--baseline needs --train TRAIN (the file the baselines are fitted on)")
    labels = [name for name, _ in models] + list(args.baseline)
    duplicates = sorted({x for x in labels if labels.count(x) > 1})
    if duplicates:
        raise UserError(f"each compared entry needs its own name; repeated: {', '.join(duplicates)}")
    for name, path in models:  # fail on a missing directory before spending time on the others
        if not Path(path).is_dir():
            raise UserError(f"--model {name}={path}: model directory not found")
    device = resolve_device(args.device)
    train = load_train_set(args.train) if args.baseline else None

    entries = []
    for name, path in models:
        scored = load_model(path, device, label=name)
        if train is not None and list(scored.item_map.ids) != list(train.item_map.ids):
            log.warning("%s was trained on another item set than %s: its catalogue differs from the baselines'", name, args.train)
        entries.append(scored)
    results, report = {}, {"test": str(args.test), "train": args.train, "entries": {}}
    for spec in args.baseline:
        entries.append(fit_baseline_scorer(spec, train))
    events = read_events(args.test)  # read once, evaluated against every entry
    for scored in entries:
        log.info("evaluating %s", scored.label)
        result, seconds = evaluate_scored(scored, args.test, args, device, events)
        results[scored.label] = result.metrics
        report["entries"][scored.label] = {
            **scored.info, **result.to_dict(),
            "seconds": round(seconds, 3), "events_per_s": round(result.n_events / max(seconds, 1e-9), 1),
        }
        log.info("%s: %s", scored.label, ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items() if k.endswith(f"@{max(result.cutoffs)}")))
    first = next(iter(report["entries"].values()))
    report.update({k: first[k] for k in ("protocol", "ties", "exclude_seen", "cutoffs")})
    cutoffs = first["cutoffs"]
    table = comparison_markdown(results, cutoffs)
    counts = "\n".join(
        f"- {label}: {e['n_events']} predictions in {e['n_sessions']} sessions, {e['n_unknown_dropped']} unknown test "
        f"events dropped, {e['n_items']} items, {e['seconds']:.1f} s"
        + (f" (+ {e['fit_seconds']:.1f} s fit)" if "fit_seconds" in e else "")
        for label, e in report["entries"].items()
    )
    header = (
        f"# Comparison on {args.test}\n\nProtocol `{report['protocol']}`, {report['ties']} ties"
        f"{', seen items excluded' if report['exclude_seen'] else ''}; full ranking of the catalogue.\n"
    )
    markdown = f"{header}\n{table}\n\n{counts}\n"
    out = Path(args.out)
    with atomic_file(out / "comparison.md") as fh:
        fh.write(markdown)
    with atomic_file(out / "comparison.json") as fh:
        json.dump(report, fh, indent=2)
    plot_metrics(results, cutoffs, out / "comparison.png", title=f"{report['protocol']} protocol on {Path(args.test).name}")
    print(table)
    print()
    print(counts)
    print(f"\nwritten: {out / 'comparison.md'}, {out / 'comparison.json'}, {out / 'comparison.png'}")
    return 0
