"""Seconds per training epoch of several parameter sets (GRU4Rec or SASRec), measured back to back.

Training times recorded while other jobs share the machine are not comparable between models; this
runs every parameter set for a few epochs in one process, interleaved over rounds, so the figures
(and above all their ratios) come from the same conditions. Epoch 1 of each run is left out (kernel
builds, warm-up); the median over the remaining epochs and rounds is reported, with the time of a
whole training (that epoch time x the epochs the model trains).

    python benchmarks/train_time_models.py --params rsc15-xe retailrocket-bprmax sasrec [--rounds 2]
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from gru4rec.training.params import load_params
from gru4rec.training.run import train

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rsc15_100k"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA / "yoochoose-clicks-100k_train_tr.txt.gz")
    ap.add_argument("--params", nargs="+", required=True, help="built-in sets or parameter files")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per run (the first is not counted)")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    print(next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), "?"))
    seconds: dict[str, list[float]] = {name: [] for name in args.params}
    for _ in range(args.rounds):
        for name in args.params:
            params = load_params(name)
            with tempfile.TemporaryDirectory() as tmp:
                history = train(args.data, Path(tmp) / "m", params.replace(n_epochs=args.epochs), device="cpu")
            seconds[name] += [h.seconds for h in history[1:]]
    print("| params | s / epoch | epochs | s / training |")
    print("|---|---|---|---|")
    for name, values in seconds.items():
        per_epoch = float(np.median(values))
        n_epochs = load_params(name).n_epochs
        print(f"| {Path(name).stem} | {per_epoch:.1f} | {n_epochs} | {per_epoch * n_epochs:.0f} |")


if __name__ == "__main__":
    main()
