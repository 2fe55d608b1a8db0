"""GPU training check: throughput of the eager and the fast (CUDA-graph) step side by side, and the
accuracy both reach, on a synthetic YooChoose-like log it generates itself (no data files needed).

    python benchmarks/gpu_check.py [--events 800000] [--items 37000] [--epochs 2] [--out DIR]

1. A 37,000-item synthetic log (gru4rec synth's generator), split in time: sessions starting in the
   last day are the test set.
2. Events/s and mini-batches/s of both steps with rsc15-xe at batch 32, 64 and 256, on a prefix of
   the training sessions sized for a ~10 s eager epoch (one warm-up epoch each, then one measured).
3. Recall@20 / MRR@20 (full ranking, conservative ties) of rsc15-xe trained with each step.
Prints markdown tables; benchmarks/gpu_check.sh runs it after the CUDA tests.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from data_prep.synth import generate_log, write_tsv
from gru4rec.data.sessions import Sessions, load_eval_data, load_training_data
from gru4rec.evaluation.protocol import ModelScorer, evaluate
from gru4rec.training.params import load_params
from gru4rec.training.schedule import EpochSchedule
from gru4rec.training.trainer import Trainer

START = time.perf_counter()


def say(message: str) -> None:
    print(f"[{time.perf_counter() - START:6.1f} s] {message}", flush=True)


def synthetic_split(out: Path, n_events: int, n_items: int) -> tuple[Path, Path]:
    df = generate_log(n_events, n_items, seed=0, days=7.0)
    start = df.groupby("SessionId")["Time"].transform("min")
    test = start >= df["Time"].max() - 86_400
    train_path, test_path = out / "train.tsv", out / "test.tsv"
    write_tsv(df[~test], train_path)
    write_tsv(df[test], test_path)
    return train_path, test_path


def prefix(sessions: Sessions, n_events: int) -> Sessions:
    """The oldest sessions holding about n_events events (training order is oldest first)."""
    k = int(np.searchsorted(sessions.offsets, n_events, side="right"))
    k = max(1, min(k, sessions.n_sessions))
    return Sessions(sessions.items[: sessions.offsets[k]], sessions.offsets[: k + 1], sessions.session_ids[:k])


def timed_epochs(trainer: Trainer, epochs: int) -> float:
    """Events/s of the last epoch (the first is warm-up: kernels, graph capture)."""
    for epoch in range(1, epochs + 1):
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        stats = trainer.train_epoch(epoch)  # ends with a sync (the epoch's loss)
        seconds = time.perf_counter() - start
    return stats.events / seconds


def throughput(train_path: Path, batches: list[int], device: torch.device) -> None:
    sessions, _, counts, _ = load_training_data(train_path)
    print("\n| batch | events | eager ev/s | fast ev/s | eager mini-batches/s | fast mini-batches/s | fast / eager | fast step |")
    print("|---|---|---|---|---|---|---|---|")
    for batch in batches:
        params = load_params("rsc15-xe").replace(batch_size=batch)
        part = prefix(sessions, 4_000 * batch)  # ~10 s per eager epoch at ~400 mini-batches/s
        schedule = EpochSchedule.build(part, batch)
        events = int(schedule.rows.sum())
        rates, kind = {}, ""
        for step in ("eager", "auto"):
            trainer = Trainer(params, part, counts, device, seed=1, step=step)
            rates[step] = timed_epochs(trainer, 2)
            kind = trainer.kind + (" (CUDA graph)" if trainer.fixed is not None and trainer.fixed.graph is not None else "")
            say(f"batch {batch} {step}: {rates[step]:,.0f} events/s")
        per_event = schedule.n_steps / events
        print(f"| {batch} | {events:,} | {rates['eager']:,.0f} | {rates['auto']:,.0f} | {rates['eager'] * per_event:,.0f} "
              f"| {rates['auto'] * per_event:,.0f} | **{rates['auto'] / rates['eager']:.1f}** | {kind} |", flush=True)


def accuracy(train_path: Path, test_path: Path, epochs: int, device: torch.device) -> None:
    sessions, item_map, counts, _ = load_training_data(train_path)
    test, n_unknown = load_eval_data(test_path, item_map)
    params = load_params("rsc15-xe").replace(n_epochs=epochs)
    print(f"\nrsc15-xe, {epochs} epochs on {sessions.n_events:,} training events, {len(item_map):,} items; "
          f"test {test.n_events:,} events ({n_unknown:,} unknown dropped)\n")
    print("| step | Recall@20 | MRR@20 | train s | final loss |")
    print("|---|---|---|---|---|")
    for step in ("eager", "auto"):
        trainer = Trainer(params, sessions, counts, device, seed=1, step=step)
        start = time.perf_counter()
        history = [trainer.train_epoch(e) for e in range(1, epochs + 1)]
        seconds = time.perf_counter() - start
        trainer.model.eval()
        metrics = evaluate(ModelScorer(trainer.model), test, [20], "conservative", device=device, n_unknown=n_unknown).metrics
        name = "eager" if step == "eager" else f"fast ({trainer.kind})"
        print(f"| {name} | {metrics['recall@20']:.4f} | {metrics['mrr@20']:.4f} | {seconds:.0f} "
              f"| {history[-1].loss:.4f} |", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=800_000)
    ap.add_argument("--items", type=int, default=37_000)
    ap.add_argument("--epochs", type=int, default=2, help="training epochs of the accuracy comparison")
    ap.add_argument("--batches", type=int, nargs="+", default=[32, 64, 256])
    ap.add_argument("--out", type=Path, help="where to write the synthetic split (default: a temporary directory)")
    ap.add_argument("--device", default="cuda", help="cuda (the check), or cpu for a dry run of the script itself")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (dry run)"
    say(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {name}")
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        train_path, test_path = synthetic_split(out, args.events, args.items)
        say(f"synthetic log: {args.events:,} events, {args.items:,} items -> {train_path}, {test_path}")
        throughput(train_path, args.batches, device)
        accuracy(train_path, test_path, args.epochs, device)
    say("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
