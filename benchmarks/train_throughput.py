"""Training throughput (events/s) of GRU4Rec.

CPU: `rsc15-xe` on rsc15_100k train_full (70,278 events, 2,933 items) with the fused step (compiled
kernels, and PyTorch ops only) and the eager (autograd) step, for the given torch thread counts.
The authors' reference code does about 14,900 events/s on a 2-core machine of this kind. With
--gpu (and CUDA present), also batch sizes 32, 64 and 256.

    python benchmarks/train_throughput.py [--epochs 4] [--threads 1 2] [--steps fused fused-torch eager]
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import torch

from gru4rec.training import native
from gru4rec.training.params import load_params
from gru4rec.data.sessions import load_training_data
from gru4rec.training.trainer import Trainer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rsc15_100k" / "yoochoose-clicks-100k_train_full.txt.gz"
REFERENCE_CPU = 14_900


def measure(params, sessions, counts, device: torch.device, step: str, epochs: int) -> tuple[float, float, float]:
    """Events/s over epochs 2..n together (the first includes warm-up), the best epoch's, and the last loss.

    The overall figure includes the negative-sample buffer refills (every 10M samples), which a
    single epoch of this small set may or may not contain.
    """
    threads = torch.get_num_threads() if device.type == "cpu" else None
    os.environ["GRU4REC_NATIVE"] = "0" if step == "fused-torch" else "1"
    native.library.cache_clear()
    trainer = Trainer(params, sessions, counts, device, seed=1, step=step.removesuffix("-torch"), threads=threads)
    best, loss, events, seconds = 0.0, float("nan"), 0, 0.0
    for epoch in range(1, epochs + 1):
        stats = trainer.train_epoch(epoch)
        best, loss = max(best, stats.events_per_s), stats.loss
        if epoch > 1 or epochs == 1:
            events, seconds = events + stats.events, seconds + stats.seconds
    return events / seconds, best, loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=Path, default=DATA)
    ap.add_argument("--params", default="rsc15-xe")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", nargs="+", default=["fused", "fused-torch", "eager"], choices=["fused", "fused-torch", "eager"],
                    help="fused: the hand-written step with the compiled CPU kernels; fused-torch: the same step "
                    "in PyTorch ops only (GRU4REC_NATIVE=0); eager: autograd")
    ap.add_argument("--gpu", action="store_true", help="also measure on CUDA at batch sizes --gpu-batches")
    ap.add_argument("--gpu-batches", type=int, nargs="+", default=[32, 64, 256])
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    params = load_params(args.params)
    sessions, _, counts, _ = load_training_data(args.train)
    print(f"{args.train.name}: {sessions.n_events:,} events, {sessions.n_sessions:,} sessions, {len(counts):,} items; params {args.params}")
    print("| device | step | threads | batch | events/s (epochs 2+) | best epoch | x reference CPU | loss |")
    print("|---|---|---|---|---|---|---|---|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for step in args.steps:
            eps, best, loss = measure(params, sessions, counts, torch.device("cpu"), step, args.epochs)
            print(f"| cpu | {step} | {threads} | {params.batch_size} | {eps:,.0f} | {best:,.0f} | {eps / REFERENCE_CPU:.2f} "
                  f"| {loss:.4f} |", flush=True)
    if args.gpu and torch.cuda.is_available():
        for batch in args.gpu_batches:
            p = params.replace(batch_size=batch)
            for step in args.steps:
                eps, best, loss = measure(p, sessions, counts, torch.device("cuda"), step, args.epochs)
                print(f"| {torch.cuda.get_device_name()} | {step} | - | {batch} | {eps:,.0f} | {best:,.0f} | - "
                      f"| {loss:.4f} |", flush=True)


if __name__ == "__main__":
    main()
