"""The service's exact top-k, kernel by kernel: every item scored for a batch of sessions, then the top k.

Compares the compiled kernels (what the service uses when a C compiler is present: approximate
scores from an 8-bit copy of the table, `native.ScoreTable.screen`, then the items the error
bounds cannot rule out scored exactly, `ScoreTable.top_k`) with PyTorch's fallback (`torch.addmm`
over the transposed float32 table, then `torch.topk`), for batch sizes 1 to 16, on a random table,
one thread. Each figure is the median of 25 calls, with the table in cache ("hot") and after 48 MB
of other memory traffic ("cold": how a busy server meets it).

    python benchmarks/score_kernel.py [--items 37286] [--dim 100] [--k 20]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from train_throughput import cpu_features, processor_name

from gru4rec.training import native


def median_time(fn: Callable[[], object], cold: bool, calls: int = 25) -> float:
    """Median seconds per call; with `cold`, other memory is streamed through the caches before each."""
    other = torch.ones(12_000_000)
    times = []
    for _ in range(calls):
        if cold:
            other.add_(1.0)
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=37_286)
    ap.add_argument("--dim", type=int, default=100)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    args = ap.parse_args()
    torch.set_num_threads(1)
    if native.library() is None:
        raise SystemExit("the native kernels are not available here (no C compiler, or GRU4REC_NATIVE=0)")
    g = torch.Generator().manual_seed(0)
    weights, bias = torch.randn(args.items, args.dim, generator=g), torch.randn(args.items, generator=g)
    table, table_t = native.ScoreTable(weights, bias), weights.t().contiguous()

    def kernels(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return table.top_k(table.screen(h), h, args.k)

    def pytorch(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.topk(torch.addmm(bias, h, table_t), args.k)

    print(f"{args.items:,} items x {args.dim}, top {args.k}; {processor_name()} ({cpu_features()}), 1 thread; torch {torch.__version__}\n")
    print("| sessions | kernels, hot µs | PyTorch, hot µs | kernels, cold µs | PyTorch, cold µs |")
    print("|---|---|---|---|---|")
    for b in args.batches:
        h = torch.randn(b, args.dim, generator=g)
        assert torch.equal(kernels(h)[1], pytorch(h)[1])  # random scores: no near-ties, so the same items
        times = [median_time(lambda: fn(h), cold) * 1e6 for cold in (False, True) for fn in (kernels, pytorch)]
        print(f"| {b} | " + " | ".join(f"{t:,.0f}" for t in times) + " |", flush=True)


if __name__ == "__main__":
    main()
