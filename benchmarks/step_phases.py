"""Where the fused CPU training step's time goes, phase by phase, on a generated log of a given catalogue size.

Runs the default (fused) step of a parameter set over a generated log whose items follow a Zipf-like
popularity over --items items (the negatives then reach deep into the catalogue, as on real data),
and times each phase of the step (matrix products, compiled kernels, the Python around them) with
wrappers, over --steps mini-batches after one warm-up pass. Comparing --items 37000 with --items
1400000 shows what grows with the catalogue (the random rows of the item tables and their optimiser
state: cache and TLB misses).

    python benchmarks/step_phases.py [--items 1400000] [--params rsc15-xe] [--steps 1500]

Times are this thread's CPU time for the whole pass and wall-clock nanoseconds per phase (phases nest:
`step._output` contains the output products and the loss kernel).
"""

from __future__ import annotations

import argparse
import collections
import time

import numpy as np
import torch

from gru4rec.data.sessions import Sessions
from gru4rec.training import native
from gru4rec.training.batching import session_parallel_steps
from gru4rec.training.params import load_params
from gru4rec.training.trainer import Trainer
from train_throughput import cpu_features, processor_name


def zipf_sessions(n_items: int, n_events: int, seed: int = 0) -> tuple[Sessions, np.ndarray]:
    """Sessions of 4 events whose items follow a Zipf(1.2) popularity over a shuffled catalogue."""
    rng = np.random.default_rng(seed)
    ranks = rng.zipf(1.2, size=n_events * 3)
    ranks = ranks[ranks <= n_items][:n_events] - 1
    items = rng.permutation(n_items)[ranks].astype(np.int64)
    offsets = np.arange(0, len(items) + 1, 4, dtype=np.int64)
    items = items[: offsets[-1]]
    counts = np.maximum(np.bincount(items, minlength=n_items), 1)
    return Sessions(items, offsets, np.arange(len(offsets) - 1).astype(str)), counts


def timed(spent: collections.Counter, obj: object, attr: str, label: str) -> None:
    """Replace obj.attr by a wrapper that adds its wall time to spent[label]."""
    inner = getattr(obj, attr)

    def wrapper(*args, **kwargs):
        start = time.perf_counter_ns()
        try:
            return inner(*args, **kwargs)
        finally:
            spent[label] += time.perf_counter_ns() - start

    setattr(obj, attr, wrapper)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=1_400_000)
    ap.add_argument("--events", type=int, default=600_000)
    ap.add_argument("--params", default="rsc15-xe")
    ap.add_argument("--steps", type=int, default=1500)
    args = ap.parse_args()
    torch.set_num_threads(1)
    sessions, counts = zipf_sessions(args.items, args.events)
    params = load_params(args.params)
    trainer = Trainer(params, sessions, counts, torch.device("cpu"), seed=1, step="auto", self_check=False, threads=1)
    if trainer.fused is None:
        raise SystemExit(f"{args.params}: the fused step does not apply here (step {trainer.kind})")
    spent: collections.Counter = collections.Counter()
    lib = getattr(trainer.fused.ops, "lib", None)
    for name in ("g4r_distinct", "g4r_xe_grad", "g4r_bprmax_grad", "g4r_output_rows_update", "g4r_adagrad_rows"):
        if lib is not None:
            timed(spent, lib, name, f"kernel {name}")
    timed(spent, torch, "mm", "torch.mm")
    timed(spent, torch, "addmm", "torch.addmm")
    timed(spent, native, "matmul", "native.matmul (blocked products, where a part of the step chose them)")
    for name in ("_rows", "_forward", "_output", "_backward"):
        timed(spent, trainer.fused, name, f"step.{name}")
    timed(spent, trainer, "batch", "trainer.batch (negatives, logQ)")
    batches = [torch.from_numpy(s.positions) for _, s in zip(range(args.steps), session_parallel_steps(sessions, params.batch_size))]

    def one_pass() -> float:
        hidden = trainer.model.init_hidden(len(batches[0]))
        start = time.thread_time()
        for pos in batches:
            if len(pos) != len(hidden[0]):
                hidden = trainer.model.init_hidden(len(pos))
            _, hidden = trainer.train_step(trainer.items[pos], trainer.items[pos + 1], hidden)
        return (time.thread_time() - start) / len(batches)

    one_pass()
    spent.clear()
    per_step = one_pass()
    print(f"{processor_name()} ({cpu_features()}); {args.params}, {args.items:,} items, {len(batches)} mini-batches")
    print(f"\n| phase | µs per mini-batch |\n|---|---|\n| whole step (CPU time) | {per_step * 1e6:,.0f} |")
    for label, ns in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"| {label} | {ns / 1e3 / len(batches):,.1f} |")


if __name__ == "__main__":
    main()
