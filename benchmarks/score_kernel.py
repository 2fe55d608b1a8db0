"""The service's exact top-k, kernel by kernel: all items scored for a batch of sessions, then the top k.

Compares the compiled kernels (`native.ScoreTable.scores`, `native.top_k`: what the service uses
when a C compiler is present) with PyTorch's (`torch.addmm` over the transposed table and
`torch.topk`: the fallback), for batch sizes 1 to 16, on a random table of the given size, one
thread, best of 7 repetitions (a hot cache: inside the server the table is also read from memory).

    python benchmarks/score_kernel.py [--items 37286] [--dim 100] [--k 20]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from gru4rec.training import native

from train_throughput import cpu_features, processor_name


def best_of(fn: Callable[[], object], repeat: int = 7, number: int = 40) -> float:
    """Least seconds per call over `repeat` timings of `number` calls."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - started) / number)
    return best


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
    print(f"{args.items:,} items x {args.dim}, top {args.k}; {processor_name()} ({cpu_features()}), 1 thread; torch {torch.__version__}\n")
    print("| sessions | scores: kernel µs | scores: torch.addmm µs | top-k: kernel µs | top-k: torch.topk µs | both: kernel / PyTorch µs |")
    print("|---|---|---|---|---|---|")
    for b in args.batches:
        h = torch.randn(b, args.dim, generator=g)
        scores = table.scores(h)
        assert torch.equal(native.top_k(scores, args.k)[1], torch.topk(scores, args.k)[1])  # no ties in random scores
        s_kernel = best_of(lambda: table.scores(h))
        s_torch = best_of(lambda: torch.addmm(bias, h, table_t))
        k_kernel = best_of(lambda: native.top_k(scores, args.k))
        k_torch = best_of(lambda: torch.topk(scores, args.k))
        print(f"| {b} | {s_kernel * 1e6:,.0f} | {s_torch * 1e6:,.0f} | {k_kernel * 1e6:,.0f} | {k_torch * 1e6:,.0f} "
              f"| {(s_kernel + k_kernel) * 1e6:,.0f} / {(s_torch + k_torch) * 1e6:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
