"""`gru4rec compare`: several models and baselines on one test file, side by side."""

from __future__ import annotations

import argparse


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

    from gru4rec.cli.evaluate import evaluation_options
    from gru4rec.evaluation.compare import COMPARISON_OUTPUT, compare, write_comparison
    from gru4rec.evaluation.reports import comparison_markdown
    from gru4rec.foundation.atomic import check_output_dir

    options = evaluation_options(args)
    models = _model_specs(args.model)
    check_output_dir(args.out, COMPARISON_OUTPUT)
    comparison = compare(args.test, models, list(args.baseline), args.train, options, args.device)
    files = write_comparison(comparison, Path(args.out))
    print(comparison_markdown(comparison.metrics, comparison.cutoffs))
    print()
    print(comparison.counts())
    print(f"\nwritten: {', '.join(map(str, files))}")
    return 0
