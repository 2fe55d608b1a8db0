"""`gru4rec tune`: optuna search of GRU4Rec hyper-parameters, selected on a validation file."""

from __future__ import annotations

import argparse


def register(subparsers, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "tune",
        parents=[common],
        help="search hyper-parameters with optuna (train on TRAIN, select on VALID)",
        description=(
            "Each trial trains GRU4Rec on TRAIN with parameters drawn from the search space, evaluates "
            "VALID after every epoch (full ranking, conservative ties) and scores the best epoch by "
            "--metric. The study is stored in --storage (SQLite in DIR by default): rerunning the "
            "command continues it until it holds --trials finished trials. Writes DIR/best_params.toml "
            "(for `gru4rec train --params`; n_epochs is the selected epoch), DIR/trials.csv and "
            "DIR/tune.json, and prints the trial table. The space file format is described in "
            "gru4rec/tuning/search.py; built-in spaces: xe, bprmax (GRU4Rec), sasrec (SASRec: the space sets "
            "architecture = \"sasrec\")."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("train", metavar="TRAIN", help="training session file (e.g. *_train_tr)")
    p.add_argument("valid", metavar="VALID", help="validation session file (e.g. *_train_valid)")
    p.add_argument("--space", required=True, metavar="SPACE", help="search-space TOML file or built-in space name (xe, bprmax, sasrec)")
    p.add_argument("--trials", type=int, required=True, metavar="N", help="finished trials the study should hold")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--storage", metavar="URL", help="optuna storage URL (default: sqlite:///DIR/study.db)")
    p.add_argument("--study-name", default="gru4rec", help="study name inside the storage")
    p.add_argument("--metric", default="mrr@20", help="selection metric on VALID: recall@K, mrr@K or ndcg@K")
    p.add_argument("--params", metavar="BASE", help="built-in parameter set or file for the parameters the space leaves alone")
    p.add_argument("--timeout", type=float, metavar="S", help="stop starting new trials after S seconds")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=42, help="seed of the sampler and of every trial's training")
    p.add_argument("--eval-batch-size", type=int, default=512, help="sessions evaluated at once during validation")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import math

    import pandas as pd

    from gru4rec.training.params import load_params
    from gru4rec.tuning.search import load_space, tune

    base = load_params(args.params) if args.params else None  # None: the space's architecture's defaults
    space = load_space(args.space, base)
    result = tune(
        args.train, args.valid, space, args.trials, args.out,
        storage=args.storage, study_name=args.study_name, metric=args.metric, base=base,
        timeout=args.timeout, device=args.device, seed=args.seed, eval_batch_size=args.eval_batch_size,
    )
    table = pd.DataFrame(result.trials).drop(columns=["error"], errors="ignore")
    with pd.option_context("display.max_columns", None, "display.width", 250):
        print(table.to_string(index=False, float_format=lambda v: "nan" if math.isnan(v) else f"{v:.4g}"))
    print(
        f"\nbest: trial {result.best_trial}, {result.metric} {result.best_value:.4f} -> {args.out}/best_params.toml"
        f" (n_epochs = the selected epoch, {result.best_params.n_epochs})"
    )
    return 0
