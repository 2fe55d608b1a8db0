"""`gru4rec train`: fit GRU4Rec on a prepared session file and write a model directory."""

from __future__ import annotations

import argparse
import os


def register(subparsers, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "train",
        parents=[common],
        help="train GRU4Rec (or SASRec) on a session file",
        description=(
            "Train GRU4Rec on TRAIN (a session file with the header SessionId ItemId Time, as written by "
            "`gru4rec prepare`) and write the model directory OUT: weights (loadable with "
            "torch.load(weights_only=True)) and metadata.json (parameters, item map, training history). "
            "The directory is rewritten atomically after every epoch, so an interrupted run can go on "
            "with --resume. With --valid, VALID is evaluated after each epoch and the best epoch is kept."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("train", metavar="TRAIN", help="training session file (TSV or Parquet)")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="model directory to write")
    p.add_argument("--valid", metavar="VALID", help="validation session file, evaluated after every epoch")
    p.add_argument(
        "--params", metavar="NAME_OR_FILE",
        help="built-in parameter set (rsc15-xe, retailrocket-bprmax; sasrec for a SASRec transformer) or a "
        "TOML/JSON parameter file; unset parameters keep the defaults. A file or --set with "
        "architecture=sasrec trains SASRec (see docs/hyperparameters.md)",
    )
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one parameter, e.g. --set layers=[200] --set loss=bpr-max (repeatable)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=42, help="random seed (weights, dropout, negative samples)")
    p.add_argument("--metric", default="mrr@20", help="validation metric that picks the best epoch: recall@K, mrr@K or ndcg@K")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in MODEL_DIR from its last finished epoch")
    p.add_argument(
        "--step", choices=["auto", "fused", "eager"], default="auto",
        help="training step implementation: fused (hand-written forward/backward, fast on CPU), eager "
        "(autograd, the reference for correctness) or auto (fused where supported)",
    )
    p.add_argument(
        "--distributed", action="store_true",
        help="data-parallel training as one rank of a torchrun job (gloo on CPU, NCCL on CUDA): "
        "torchrun --nproc_per_node N -m gru4rec.cli train ... --distributed",
    )
    p.add_argument(
        "--init-from", metavar="MODEL_DIR",
        help="warm start: continue from this trained model on a newer TRAIN; known items keep their "
        "learned rows, new items get fresh ones (same layers/embedding required)",
    )
    p.add_argument(
        "--drop-vanished-items", action="store_true",
        help="with --init-from: drop items that no longer occur in TRAIN (default: keep them)",
    )
    p.add_argument(
        "--threads", type=int, default=None, metavar="N",
        help="torch intra-op threads while training on a CPU (default 1: fastest for GRU4Rec-sized steps; "
        "try more for large layers or batches)",
    )
    p.add_argument("--eval-batch-size", type=int, default=512, help="sessions evaluated at once during validation")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gru4rec.training.params import load_params
    from gru4rec.foundation.errors import UserError
    from gru4rec.training.run import train

    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    params = load_params(args.params, args.overrides)
    history = train(
        args.train, args.out, params,
        valid_path=args.valid, device=args.device, seed=args.seed, metric=args.metric,
        resume=args.resume, eval_batch_size=args.eval_batch_size, step=args.step,
        distributed=args.distributed, init_from=args.init_from, keep_vanished_items=not args.drop_vanished_items,
        threads=args.threads,
    )
    last = history[-1] if history else None
    if last is not None and int(os.environ.get("RANK", "0")) == 0:
        print(f"trained {len(history)} epoch(s); last: loss {last.loss:.4f}, {last.events_per_s:,.0f} events/s -> {args.out}")
    return 0
