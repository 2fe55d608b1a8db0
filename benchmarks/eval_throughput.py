"""Evaluation throughput (predictions/s) of `gru4rec evaluate`'s full-ranking code path.

    .venv/bin/python benchmarks/eval_throughput.py [--items 3000 37000 100000] [--sessions 2000]
        [--device cpu] [--batch-size 512] [--ties standard conservative median] [--json OUT.json]

For each catalogue size a GRU4Rec with random weights (layers [100]) scores synthetic test sessions
(lengths 2 + geometric(0.3), capped at 50: about 4.3 events and 3.3 predictions per session; items
drawn with a Zipf-like popularity); every prediction ranks the whole catalogue (comparison counts)
and builds the top-k lists for coverage/popularity, cut-offs 1 5 10 20, next-item protocol.
One untimed warm-up run per size; the timed figure is the best of --repeats runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gru4rec.training.params import HyperParams  # noqa: E402
from gru4rec.data.sessions import Sessions  # noqa: E402
from gru4rec.evaluation.protocol import TIE_MODES, ModelScorer, evaluate  # noqa: E402
from gru4rec.model.network import GRU4Rec  # noqa: E402


def synthetic_sessions(n_sessions: int, n_items: int, seed: int) -> Sessions:
    rng = np.random.default_rng(seed)
    lengths = np.minimum(2 + rng.geometric(0.3, n_sessions) - 1, 50)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    items = rng.choice(n_items, size=int(lengths.sum()), p=popularity / popularity.sum())
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    return Sessions(items.astype(np.int64), offsets, np.arange(n_sessions).astype(str).astype(object))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, nargs="+", default=[3000, 37000, 100000])
    ap.add_argument("--sessions", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--ties", nargs="+", default=list(TIE_MODES), choices=TIE_MODES)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="OUT.json")
    args = ap.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    rows = []
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.sessions} sessions, batch {args.batch_size}", flush=True)
    print(f"{'items':>8} {'ties':>13} {'predictions':>12} {'seconds':>9} {'events/s':>10}", flush=True)
    for n_items in args.items:
        model = GRU4Rec(n_items, HyperParams(layers=(100,)).model).to(device).eval()
        sessions = synthetic_sessions(args.sessions, n_items, args.seed)
        counts = np.bincount(sessions.items, minlength=n_items)
        scorer = ModelScorer(model)
        evaluate(scorer, synthetic_sessions(64, n_items, args.seed + 1), device=device, item_counts=counts)
        for ties in args.ties:
            best = float("inf")
            for _ in range(args.repeats):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                result = evaluate(scorer, sessions, ties=ties, batch_size=args.batch_size, device=device, item_counts=counts)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                best = min(best, time.perf_counter() - start)
            row = {"items": n_items, "ties": ties, "predictions": result.n_events, "seconds": round(best, 3),
                   "events_per_s": round(result.n_events / best, 1), "device": str(device)}
            rows.append(row)
            print(f"{n_items:>8} {ties:>13} {result.n_events:>12} {best:>9.2f} {row['events_per_s']:>10,.0f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
