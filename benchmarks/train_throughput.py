"""Training throughput (events/s) of GRU4Rec: the default (fast) step against the eager step, same run.

For each parameter set, a fast trainer (`--step auto`: the fused step with compiled kernels on a CPU,
the CUDA-graph step on a GPU) and an eager (autograd) trainer train on the same data, their epochs
interleaved (fast, eager, fast, eager, ...) so that both see the same machine load; the first epoch
of each is warm-up (kernel build, CUDA graph capture) and is left out. The ratio fast / eager is the
figure that carries from machine to machine: the eager step runs at about the authors' reference
speed. Wall-clock and CPU-time (this thread only) events/s are both printed: on a shared machine the
latter is the steadier.

    python benchmarks/train_throughput.py [--params rsc15-xe retailrocket-bprmax] [--epochs 3]
        [--threads 1] [--device cpu|cuda] [--batch-sizes 32 64 256] [--train FILE] [--min-of 20]

`--min-of R` adds a second table for a busy machine, where other processes slow whole epochs by
different amounts: the least CPU time per mini-batch of each step over R interleaved passes over the
same first mini-batches of the epoch (`--steps`, 300), i.e. each step's speed in its quietest pass.
It also times the fast step's matrix products alone (PyTorch's profiler, one pass, plus the kernels'
blocked product where a part of the step chose it): no rewrite of the rest of the step
can take the ratio fast / eager above eager / products with those products on that processor.

Data: rsc15_100k train_full (70,278 events, 2,933 items) from ../shared/data, or any session file;
`--synthetic N_ITEMS` trains on a generated log instead (see gru4rec.cli synth).
"""

from __future__ import annotations

import argparse
import logging
import platform
import time
from pathlib import Path

import torch

from gru4rec.data.sessions import Sessions, load_training_data
from gru4rec.training.batching import session_parallel_steps
from gru4rec.training.params import load_params
from gru4rec.training.trainer import Trainer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rsc15_100k" / "yoochoose-clicks-100k_train_full.txt.gz"


def processor_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_features() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
    except OSError:
        return "?"
    return ", ".join(x for x in ("avx2", "avx512f", "amx_tile") if x in flags) or "no AVX2"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{processor_name()} ({cpu_features()}), {torch.get_num_threads()} thread(s)"


class Timed:
    """One trainer and the epochs it trained after its warm-up epoch."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer, self.epoch, self.events, self.wall, self.cpu = trainer, 0, 0, 0.0, 0.0
        self.loss = float("nan")

    def train_epoch(self, measured: bool) -> None:
        self.epoch += 1
        if self.trainer.device.type == "cuda":
            torch.cuda.synchronize()
        cpu = time.thread_time()
        stats = self.trainer.train_epoch(self.epoch)  # ends with a device sync (the loss)
        cpu = time.thread_time() - cpu
        self.loss = stats.loss
        if measured:
            self.events, self.wall, self.cpu = self.events + stats.events, self.wall + stats.seconds, self.cpu + cpu

    def rates(self) -> tuple[float, float]:
        return self.events / max(self.wall, 1e-9), self.events / max(self.cpu, 1e-9)


def compare(name: str, train: Path, device: torch.device, batch_size: int | None, epochs: int) -> str:
    params = load_params(name)
    if batch_size is not None:
        params = params.replace(batch_size=batch_size)
    sessions, _, counts, _ = load_training_data(train)
    runs = {step: Timed(Trainer(params, sessions, counts, device, seed=1, step=step, threads=torch.get_num_threads()))
            for step in ("auto", "eager")}
    for epoch in range(epochs):
        for run in runs.values():
            run.train_epoch(measured=epoch > 0 or epochs == 1)
    fast, eager = runs["auto"].rates(), runs["eager"].rates()
    kind = step_label(runs["auto"].trainer)
    return (f"| {name} | {params.batch_size} | {kind} | {fast[0]:,.0f} | {eager[0]:,.0f} | **{fast[0] / eager[0]:.2f}** "
            f"| {fast[1]:,.0f} | {eager[1]:,.0f} | {fast[1] / eager[1]:.2f} | {runs['auto'].loss:.4f} / {runs['eager'].loss:.4f} |")


def least_step_time(trainer: Trainer, batches: list[torch.Tensor], passes: int) -> float:
    """CPU seconds per mini-batch of this trainer's step over `batches` (positions), least of `passes`."""
    trainer.model.train()
    best = float("inf")
    for _ in range(passes):
        hidden = trainer.model.init_hidden(len(batches[0]), trainer.device)
        start = time.thread_time()
        for pos in batches:
            if len(pos) != len(hidden[0]):
                hidden = trainer.model.init_hidden(len(pos), trainer.device)
            _, hidden = trainer.train_step(trainer.items[pos], trainer.items[pos + 1], hidden)
        best = min(best, (time.thread_time() - start) / len(batches))
    return best


def blocked_choices(trainer: Trainer) -> list:
    """The parts of the fused CPU step (output layer, GRU layers) whose products chose the kernels'
    blocked product over PyTorch's."""
    from gru4rec.training import native

    ops = getattr(getattr(trainer, "fused", None), "ops", None)
    parts = [getattr(ops, "output_mm", None), getattr(ops, "gru_mm", None)]
    return [c for c in parts if isinstance(c, native.ProductChoice) and c.fn is native.matmul]


def step_label(trainer: Trainer) -> str:
    """The trainer's step kind, and the parts whose products use the kernels' blocked product."""
    parts = [c.part for c in blocked_choices(trainer)]
    return f"{trainer.kind} (blocked mm: {', '.join(parts)})" if parts else trainer.kind


def product_time(trainer: Trainer, batches: list[torch.Tensor]) -> float:
    """CPU seconds per mini-batch spent in the matrix products (aten mm/addmm/bmm) of this trainer's
    step over `batches`: the part of a step that no rewrite of the rest can remove."""
    from torch.profiler import ProfilerActivity, profile

    from gru4rec.training import native

    blocked = [0.0]  # the kernels' blocked product is no aten op: timed here where the step chose it

    def timed(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        started = time.thread_time()
        out = native.matmul(a, b)
        blocked[0] += time.thread_time() - started
        return out

    choices = blocked_choices(trainer)
    for choice in choices:
        choice.fn = timed
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            least_step_time(trainer, batches, 1)
    finally:
        for choice in choices:
            choice.fn = native.matmul
    products = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in ("aten::mm", "aten::addmm", "aten::bmm"))
    return (products * 1e-6 + blocked[0]) / len(batches)


def compare_steps(name: str, sessions: Sessions, counts, passes: int, n_steps: int) -> str:
    """One row of the least-of-passes table: both steps over the same mini-batches, passes interleaved,
    and the ceiling of the ratio: eager time over the fast step's matrix products alone."""
    params = load_params(name)
    batches = [torch.from_numpy(step.positions) for _, step in zip(range(n_steps), session_parallel_steps(sessions, params.batch_size))]
    trainers = {step: Trainer(params, sessions, counts, torch.device("cpu"), seed=1, step=step, self_check=False,
                              threads=torch.get_num_threads()) for step in ("auto", "eager")}
    best = {step: float("inf") for step in trainers}
    for _ in range(passes):  # one pass of each at a time, so that both meet the same load
        for step, trainer in trainers.items():
            best[step] = min(best[step], least_step_time(trainer, batches, 1))
    fast, eager = best["auto"], best["eager"]
    products = product_time(trainers["auto"], batches)
    rows = sum(len(b) for b in batches) / len(batches)
    return (f"| {name} | {params.batch_size} | {step_label(trainers['auto'])} | {fast * 1e6:,.0f} | {eager * 1e6:,.0f} "
            f"| {rows / fast:,.0f} | {rows / eager:,.0f} | **{eager / fast:.2f}** | {products * 1e6:,.0f} "
            f"| {eager / products:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=Path, default=DATA)
    ap.add_argument("--params", nargs="+", default=["rsc15-xe", "retailrocket-bprmax"])
    ap.add_argument("--epochs", type=int, default=3, help="epochs per trainer, the first of them warm-up")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (both steps)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-sizes", type=int, nargs="+", help="override the parameter sets' batch size")
    ap.add_argument("--min-of", type=int, default=0, metavar="R", help="also the least-of-R-passes table (CPU)")
    ap.add_argument("--steps", type=int, default=300, help="mini-batches per pass of --min-of")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sessions, _, counts, _ = load_training_data(args.train)
    measured = f"{args.epochs - 1} measured epoch(s)" if args.epochs > 1 else "1 epoch (warm-up included)"
    print(f"{args.train.name}: {sessions.n_events:,} events, {sessions.n_sessions:,} sessions, {len(counts):,} items")
    print(f"device: {device_name(device)}; torch {torch.__version__}; {measured} per step, interleaved")
    print()
    print("| params | batch | fast step | fast ev/s | eager ev/s | fast / eager | fast ev/s (CPU time) "
          "| eager ev/s (CPU time) | ratio (CPU time) | last loss fast / eager |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.params:
        for batch in args.batch_sizes or [None]:
            print(compare(name, args.train, device, batch, args.epochs), flush=True)
    if args.min_of > 0:
        print(f"\nleast CPU time per mini-batch over {args.min_of} interleaved passes over the epoch's first {args.steps} mini-batches\n")
        print("| params | batch | fast step | fast µs/mini-batch | eager µs/mini-batch | fast ev/s | eager ev/s | fast / eager "
              "| fast step's matrix products µs/mini-batch | ceiling: eager / products |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for name in args.params:
            print(compare_steps(name, sessions, counts, args.min_of, args.steps), flush=True)


if __name__ == "__main__":
    main()
