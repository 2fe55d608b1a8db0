"""Evaluation throughput (predictions/s) of `gru4rec evaluate`'s full-ranking code path, beside the
bare score products for the same events.

    .venv/bin/python benchmarks/eval_throughput.py [--items 37000 100000 1800000] [--sessions 2000]
        [--device cpu] [--batch-size 512] [--ties standard conservative median] [--json OUT.json]

For each catalogue size a GRU4Rec with random weights (layers [100]) scores synthetic test sessions
(lengths 2 + geometric(0.3), capped at 50: about 4.3 events and 3.3 predictions per session; items
drawn with a Zipf-like popularity); every prediction ranks the whole catalogue (comparison counts,
a block of items at a time) and builds the top-k lists for coverage/popularity, cut-offs 1 5 10 20,
next-item protocol. "bare products" replays the same sessions in the same batches and only computes
the scores of every item (the GRU steps and the score matrix products, nothing counted): the floor
that evaluation's ranking adds to. One untimed warm-up run per size; the timed figures are the
best of --repeats runs, evaluation and bare products measured alternately in the same process.
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
from gru4rec.evaluation.blocks import block_items  # noqa: E402
from gru4rec.evaluation.protocol import TIE_MODES, ModelScorer, evaluate  # noqa: E402
from gru4rec.model.network import GRU4Rec  # noqa: E402


def synthetic_sessions(n_sessions: int, n_items: int, seed: int) -> Sessions:
    rng = np.random.default_rng(seed)
    lengths = np.minimum(2 + rng.geometric(0.3, n_sessions) - 1, 50)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    items = rng.choice(n_items, size=int(lengths.sum()), p=popularity / popularity.sum())
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int64)
    return Sessions(items.astype(np.int64), offsets, np.arange(n_sessions).astype(str).astype(object))


@torch.inference_mode()
def bare_score_products(scorer: ModelScorer, sessions: Sessions, batch_size: int = 512) -> int:
    """Replay `sessions` as evaluate does (longest first, batches of `batch_size`, a fresh state per batch)
    and compute every item's score after every click, block by block as evaluate scores them, keeping
    nothing: the products evaluation cannot do without. Returns the number of predictions."""
    lengths = sessions.lengths
    order = np.argsort(-lengths, kind="stable")
    order = order[lengths[order] >= 2]
    items = torch.from_numpy(sessions.items).to(scorer.device)
    n_items, predictions = scorer.n_items, 0
    for lo in range(0, len(order), batch_size):
        chunk = order[lo : lo + batch_size]
        chunk_len = lengths[chunk]
        starts = torch.from_numpy(sessions.offsets[chunk]).to(scorer.device)
        state = scorer.begin(len(chunk))
        for t in range(int(chunk_len[0]) - 1):
            m = int((chunk_len > t + 1).sum())
            state = scorer.step(state, items[starts[:m] + t])
            block = block_items(m, n_items)
            for start in range(0, n_items, block):
                scorer.score_block(state, slice(0, m), start, min(start + block, n_items))
            predictions += m
    return predictions


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, nargs="+", default=[37000, 100000, 1800000])
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
    print(f"{'items':>8} {'ties':>13} {'predictions':>12} {'seconds':>9} {'events/s':>10} {'bare products/s':>16} "
          f"{'ratio':>6}", flush=True)
    for n_items in args.items:
        model = GRU4Rec(n_items, HyperParams(layers=(100,)).model).to(device).eval()
        sessions = synthetic_sessions(args.sessions, n_items, args.seed)
        counts = np.bincount(sessions.items, minlength=n_items)
        scorer = ModelScorer(model)
        evaluate(scorer, synthetic_sessions(64, n_items, args.seed + 1), device=device, item_counts=counts)
        for ties in args.ties:
            best, bare = float("inf"), float("inf")
            for _ in range(args.repeats):
                start = _now(device)
                result = evaluate(scorer, sessions, ties=ties, batch_size=args.batch_size, device=device, item_counts=counts)
                middle = _now(device)
                n_bare = bare_score_products(scorer, sessions, args.batch_size)
                end = _now(device)
                best, bare = min(best, middle - start), min(bare, end - middle)
            assert n_bare == result.n_events
            row = {"items": n_items, "ties": ties, "predictions": result.n_events, "seconds": round(best, 3),
                   "events_per_s": round(result.n_events / best, 1), "bare_products_per_s": round(n_bare / bare, 1),
                   "ratio": round(best / bare, 2), "device": str(device)}
            rows.append(row)
            print(f"{n_items:>8} {ties:>13} {result.n_events:>12} {best:>9.2f} {row['events_per_s']:>10,.0f} "
                  f"{row['bare_products_per_s']:>16,.0f} {row['ratio']:>6.2f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


if __name__ == "__main__":
    sys.exit(main())
