"""Accuracy on rsc15_100k train_tr -> train_valid against the authors' reference figures.

Trains each built-in parameter set with several seeds, evaluates with full ranking and
conservative ties, and prints every metric at cut-offs 1, 5, 10, 20 plus the mean over seeds and
its ratio to the reference code's Recall@20 / MRR@20.

    python benchmarks/accuracy_rsc15.py [--seeds 1 2 3] [--params rsc15-xe retailrocket-bprmax]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from gru4rec.model.checkpoint import load_checkpoint
from gru4rec.training.params import load_params
from gru4rec.data.sessions import load_eval_data
from gru4rec.evaluation.protocol import ModelScorer, evaluate
from gru4rec.training.run import train

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rsc15_100k"
REFERENCE = {  # authors' reference code on this split (Recall@20, MRR@20)
    "rsc15-xe": (0.6259, 0.3410),
    "retailrocket-bprmax": (0.6523, 0.3470),
}
CUTOFFS = (1, 5, 10, 20)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--params", nargs="+", default=list(REFERENCE))
    ap.add_argument("--step", default="auto", choices=["auto", "fused", "eager"])
    ap.add_argument("--json", type=Path, help="write all results here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    train_file = args.data / "yoochoose-clicks-100k_train_tr.txt.gz"
    valid_file = args.data / "yoochoose-clicks-100k_train_valid.txt.gz"
    results: dict[str, list[dict]] = {}
    for name in args.params:
        params = load_params(name)
        for seed in args.seeds:
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                history = train(train_file, Path(tmp) / "model", params, device="cpu", seed=seed, step=args.step)
                seconds = time.perf_counter() - start
                checkpoint = load_checkpoint(Path(tmp) / "model")
                sessions, n_unknown = load_eval_data(valid_file, checkpoint.item_map)
                metrics = evaluate(ModelScorer(checkpoint.model), sessions, CUTOFFS, "conservative", n_unknown=n_unknown).metrics
            eps = float(np.mean([h.events_per_s for h in history]))
            results.setdefault(name, []).append({"seed": seed, "train_seconds": seconds, "events_per_s": eps, **metrics})
            print(f"{name} seed {seed}: " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items()) + f"  ({seconds:.0f} s, {eps:,.0f} ev/s)", flush=True)
    print()
    header = "| params | seed | " + " | ".join(f"R@{k} | M@{k}" for k in CUTOFFS) + " |"
    print(header)
    print("|" + "---|" * (2 + 2 * len(CUTOFFS)))
    for name, runs in results.items():
        rows = runs + [{"seed": "mean", **{k: float(np.mean([r[k] for r in runs])) for k in runs[0] if k != "seed"}}]
        for r in rows:
            print(f"| {name} | {r['seed']} | " + " | ".join(f"{r[f'recall@{k}']:.4f} | {r[f'mrr@{k}']:.4f}" for k in CUTOFFS) + " |")
        mean = rows[-1]
        if name in REFERENCE:
            ref_r, ref_m = REFERENCE[name]
            print(
                f"|   {name} vs reference | | Recall@20 {mean['recall@20']:.4f} / {ref_r} = {mean['recall@20'] / ref_r:.1%}, "
                f"MRR@20 {mean['mrr@20']:.4f} / {ref_m} = {mean['mrr@20'] / ref_m:.1%} |"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
