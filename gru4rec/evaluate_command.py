"""`gru4rec evaluate`: next-item Recall@k and MRR@k of a model on a test session file."""

from __future__ import annotations

import argparse
import json


def register(subparsers, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "evaluate",
        parents=[common],
        help="measure Recall@k and MRR@k of a model on a test file",
        description=(
            "Replay every test session event by event from a fresh state and rank all training items "
            "for each next event (full ranking, no sampling). Test events with items the model never "
            "saw are dropped and counted. Metrics are averaged over events."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL_DIR", help="model directory written by `gru4rec train`")
    p.add_argument("test", metavar="TEST", help="test session file (TSV or Parquet)")
    p.add_argument("--cutoffs", type=int, nargs="+", default=[1, 5, 10, 20], metavar="K", help="list lengths k")
    p.add_argument(
        "--ties", choices=["conservative", "standard", "median"], default="conservative",
        help="rank of a target tied with other items: conservative counts every tie as above it "
        "(the published protocol), standard as below it, median halfway",
    )
    p.add_argument("--json", metavar="OUT.json", help="also write the results as JSON")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=512, help="sessions evaluated at once")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gru4rec.atomic import atomic_file
    from gru4rec.checkpoint import load_checkpoint
    from gru4rec.data import load_eval_data
    from gru4rec.errors import UserError
    from gru4rec.evaluation import ModelScorer, evaluate
    from gru4rec.training import resolve_device

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    device = resolve_device(args.device)
    checkpoint = load_checkpoint(args.model, device)
    sessions, n_unknown = load_eval_data(args.test, checkpoint.item_map)
    result = evaluate(
        ModelScorer(checkpoint.model), sessions, args.cutoffs, args.ties,
        batch_size=args.batch_size, device=device, n_unknown=n_unknown,
    )
    report = {"model": str(args.model), "test": str(args.test), "ties": args.ties, **result.to_dict()}
    print(format_table(result.metrics, args.cutoffs))
    print(f"{result.n_events} predictions in {result.n_sessions} sessions; {n_unknown} test events with unknown items dropped")
    if args.json:
        with atomic_file(args.json) as fh:
            json.dump(report, fh, indent=2)
    return 0


def format_table(metrics: dict[str, float], cutoffs) -> str:
    ks = sorted(set(cutoffs))
    lines = ["metric   " + "".join(f"{'@' + str(k):>10}" for k in ks)]
    for name in ("recall", "mrr"):
        if any(f"{name}@{k}" in metrics for k in ks):
            lines.append(f"{name:<9}" + "".join(f"{metrics.get(f'{name}@{k}', float('nan')):>10.4f}" for k in ks))
    return "\n".join(lines)
