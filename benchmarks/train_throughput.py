"""Training throughput (events/s) of GRU4Rec.

CPU: `rsc15-xe` on rsc15_100k train_full (70,278 events, 2,933 items) with the fused and the eager
(autograd) step, for the given torch thread counts. The authors' reference code does about 14,900
events/s on a 2-core machine of this kind. With --gpu (and CUDA present), also batch sizes 32 and 256.

    python benchmarks/train_throughput.py [--epochs 2] [--threads 1 2] [--steps fused eager]
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from gru4rec.config import load_params
from gru4rec.data import load_training_data
from gru4rec.training import Trainer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rsc15_100k" / "yoochoose-clicks-100k_train_full.txt.gz"
REFERENCE_CPU = 14_900


def measure(params, sessions, counts, device: torch.device, step: str, epochs: int) -> tuple[float, float]:
    """Best events/s over `epochs` epochs (the first includes warm-up), and the last epoch's loss."""
    threads = torch.get_num_threads() if device.type == "cpu" else None
    trainer = Trainer(params, sessions, counts, device, seed=1, step=step, threads=threads)
    best, loss = 0.0, float("nan")
    for epoch in range(1, epochs + 1):
        stats = trainer.train_epoch(epoch)
        best, loss = max(best, stats.events_per_s), stats.loss
    return best, loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=Path, default=DATA)
    ap.add_argument("--params", default="rsc15-xe")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", nargs="+", default=["fused", "eager"], choices=["fused", "eager"])
    ap.add_argument("--gpu", action="store_true", help="also measure on CUDA at batch sizes --gpu-batches")
    ap.add_argument("--gpu-batches", type=int, nargs="+", default=[32, 256])
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    params = load_params(args.params)
    sessions, _, counts, _ = load_training_data(args.train)
    print(f"{args.train.name}: {sessions.n_events:,} events, {sessions.n_sessions:,} sessions, {len(counts):,} items; params {args.params}")
    print("| device | step | threads | batch | events/s | x reference CPU | loss |")
    print("|---|---|---|---|---|---|---|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for step in args.steps:
            eps, loss = measure(params, sessions, counts, torch.device("cpu"), step, args.epochs)
            print(f"| cpu | {step} | {threads} | {params.batch_size} | {eps:,.0f} | {eps / REFERENCE_CPU:.2f} | {loss:.4f} |", flush=True)
    if args.gpu and torch.cuda.is_available():
        for batch in args.gpu_batches:
            p = params.replace(batch_size=batch)
            for step in args.steps:
                eps, loss = measure(p, sessions, counts, torch.device("cuda"), step, args.epochs)
                print(f"| {torch.cuda.get_device_name()} | {step} | - | {batch} | {eps:,.0f} | - | {loss:.4f} |", flush=True)


if __name__ == "__main__":
    main()
