"""Training throughput (events/s) of GRU4Rec: the default (fast) step against the eager step, same run.

For each parameter set, a fast trainer (`--step auto`: the fused step with compiled kernels on a CPU,
the CUDA-graph step on a GPU) and an eager (autograd) trainer train on the same data, their epochs
interleaved (fast, eager, fast, eager, ...) so that both see the same machine load; the first epoch
of each is warm-up (kernel build, CUDA graph capture) and is left out. The ratio fast / eager is the
figure that carries from machine to machine: the eager step runs at about the authors' reference
speed. Wall-clock and CPU-time (this thread only) events/s are both printed: on a shared machine the
latter is the steadier.

    python benchmarks/train_throughput.py [--params rsc15-xe retailrocket-bprmax] [--epochs 3]
        [--threads 1] [--device cpu|cuda] [--batch-sizes 32 64 256] [--train FILE]

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

from gru4rec.data.sessions import load_training_data
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
    kind = runs["auto"].trainer.kind
    return (f"| {name} | {params.batch_size} | {kind} | {fast[0]:,.0f} | {eager[0]:,.0f} | **{fast[0] / eager[0]:.2f}** "
            f"| {fast[1]:,.0f} | {eager[1]:,.0f} | {fast[1] / eager[1]:.2f} | {runs['auto'].loss:.4f} / {runs['eager'].loss:.4f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=Path, default=DATA)
    ap.add_argument("--params", nargs="+", default=["rsc15-xe", "retailrocket-bprmax"])
    ap.add_argument("--epochs", type=int, default=3, help="epochs per trainer, the first of them warm-up")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (both steps)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-sizes", type=int, nargs="+", help="override the parameter sets' batch size")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sessions, _, counts, _ = load_training_data(args.train)
    print(f"{args.train.name}: {sessions.n_events:,} events, {sessions.n_sessions:,} sessions, {len(counts):,} items")
    print(f"device: {device_name(device)}; torch {torch.__version__}; {args.epochs - 1} measured epoch(s) per step, interleaved")
    print()
    print("| params | batch | fast step | fast ev/s | eager ev/s | fast / eager | fast ev/s (CPU time) "
          "| eager ev/s (CPU time) | ratio (CPU time) | last loss fast / eager |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.params:
        for batch in args.batch_sizes or [None]:
            print(compare(name, args.train, device, batch, args.epochs), flush=True)


if __name__ == "__main__":
    main()
