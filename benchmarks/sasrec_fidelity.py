"""Fidelity of our SASRec against RecTools' SASRecModel: same data, protocol and hyper-parameters.

Both are trained on rsc15_100k train_tr (each session a sequence; RecTools sees each session as a
"user") with the same hyper-parameters, then BOTH are scored by our evaluator on train_valid: next
item, full ranking of the train_tr catalogue, conservative ties. RecTools' scores are exported from
its trained network (its own encode_sessions + dot-product similarity, as its recommend() computes
them) for every prefix of every test session, through a SessionScorer adapter. Run-to-run noise is
measured with several seeds per implementation.

RecTools is never a dependency of this project: install it in a throw-away environment and run this
script with that environment's python (the repository is put on sys.path by the script):

    python3 -m venv /work/fidelity-venv
    /work/fidelity-venv/bin/pip install torch==2.13.0          # first: the same torch as ours
    /work/fidelity-venv/bin/pip install "rectools[torch]==0.19.0"
    /work/fidelity-venv/bin/python benchmarks/sasrec_fidelity.py --seeds 1 2 3 --epochs 5

Architectural differences that remain (inherent to the two designs, not hyper-parameters): RecTools
pads on the left to session_max_len and counts positions from the end, follows the original
SASRec's post-attention LayerNorm placement with a ReLU feed-forward of width n_factors, and keeps
only the last session_max_len + 1 clicks of a long session; ours is pre-LayerNorm with GELU,
positions from the session start and windows over long sessions. Ours gets ff_size = hidden_size
to match RecTools' feed-forward width.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gru4rec.data.sessions import load_eval_data, read_events  # noqa: E402
from gru4rec.evaluation.protocol import evaluate  # noqa: E402
from gru4rec.evaluation.sasrec import PrefixState, SASRecScorer  # noqa: E402
from gru4rec.model.architectures import ALL  # noqa: E402
from gru4rec.model.checkpoint import load_checkpoint  # noqa: E402
from gru4rec.training.run import train  # noqa: E402
from gru4rec.training.sasrec_params import SASRecParams  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "rsc15_100k"
CUTOFFS = (1, 5, 10, 20)


class RecToolsScorer:
    """SessionScorer over a fitted RecTools SASRecModel: left-padded prefixes, last position's output.

    RecTools trains on the last session_max_len + 1 clicks of each session only, so an item seen only
    earlier in long sessions is not in its catalogue: such an item scores -inf (the worst rank when
    it is the target) and is read as padding when clicked.
    """

    needs_times = False

    def __init__(self, model, item_ids: np.ndarray, max_len: int) -> None:
        self.net = model.torch_model.eval()
        internal = model.data_preparator.item_id_map.to_internal.reindex(item_ids.astype(np.int64))
        self.known = torch.as_tensor(internal.notna().to_numpy())
        # our item index -> RecTools id (0, its padding id, for items it does not know)
        self.columns = torch.as_tensor(internal.fillna(0).astype(np.int64).to_numpy())
        self.n_unknown = int((~self.known).sum())
        self.n_items = len(item_ids)
        self.max_len = max_len

    def begin(self, n_sessions: int) -> PrefixState:
        return PrefixState.empty(n_sessions, torch.device("cpu"))

    def step(self, state: PrefixState, items: torch.Tensor) -> PrefixState:
        return state.append(items, self.max_len, pad=-1)

    @torch.no_grad()
    def score(self, state: PrefixState) -> torch.Tensor:
        rows, width = state.items.shape
        x = torch.zeros(rows, self.max_len, dtype=torch.long)  # RecTools' padding id is 0, on the left
        real = torch.arange(width) < state.lengths.unsqueeze(1)
        shift = (self.max_len - state.lengths).unsqueeze(1) + torch.arange(width)  # right-align each prefix
        ids = self.columns[state.items.clamp_min(0)]
        x[torch.arange(rows).unsqueeze(1).expand(-1, width)[real], shift[real]] = ids[real]
        item_embs = self.net.item_model.get_all_embeddings()
        session = self.net.encode_sessions({"x": x}, item_embs)[:, -1, :]
        session = self.net.similarity_module.session_tower_forward(session)
        item_embs = self.net.similarity_module.item_tower_forward(item_embs)
        return (session @ item_embs[self.columns].T).masked_fill(~self.known, float("-inf"))


def run_ours(train_file: Path, valid_file: Path, params: SASRecParams, seed: int) -> tuple[dict, float]:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        train(train_file, Path(tmp) / "model", params, device="cpu", seed=seed, threads=1)
        seconds = time.perf_counter() - start
        ckpt = load_checkpoint(Path(tmp) / "model", architectures=ALL)
    sessions, n_unknown = load_eval_data(valid_file, ckpt.item_map)
    result = evaluate(SASRecScorer(ckpt.model), sessions, CUTOFFS, "conservative", n_unknown=n_unknown, list_metrics=False)
    return result.metrics, seconds


def run_rectools(train_file: Path, valid_file: Path, params: SASRecParams, seed: int, item_map) -> tuple[dict, float]:
    from pytorch_lightning import Trainer, seed_everything
    from rectools import Columns
    from rectools.dataset import Dataset
    from rectools.models import SASRecModel
    from rectools.models.nn.item_net import IdEmbeddingsItemNet

    events = read_events(train_file)  # the same order and items as ours
    interactions = pd.DataFrame({
        Columns.User: events["SessionId"].astype(str).to_numpy(),
        Columns.Item: events["ItemId"].astype(np.int64).to_numpy(),
        Columns.Weight: 1.0,
        # a strictly increasing clock keeps each session's click order under RecTools' sort
        Columns.Datetime: pd.Timestamp("2014-01-01") + pd.to_timedelta(np.arange(len(events)), unit="s"),
    })
    dataset = Dataset.construct(interactions)
    seed_everything(seed, workers=True)
    m, t = params.model, params.training
    model = SASRecModel(
        n_blocks=m.n_blocks, n_heads=m.n_heads, n_factors=m.hidden_size, dropout_rate=m.dropout_p,
        session_max_len=m.max_len, loss="softmax", lr=t.learning_rate, batch_size=t.batch_size,
        epochs=t.n_epochs, deterministic=True, item_net_block_types=(IdEmbeddingsItemNet,),
        recommend_torch_device="cpu",
        get_trainer_func=lambda: Trainer(
            max_epochs=t.n_epochs, accelerator="cpu", devices=1, deterministic=True,
            enable_checkpointing=False, logger=False, enable_progress_bar=False, enable_model_summary=False,
        ),
    )
    start = time.perf_counter()
    model.fit(dataset)
    seconds = time.perf_counter() - start
    sessions, n_unknown = load_eval_data(valid_file, item_map)
    scorer = RecToolsScorer(model, item_map.ids, m.max_len)
    result = evaluate(scorer, sessions, CUTOFFS, "conservative", n_unknown=n_unknown, list_metrics=False)
    hits = int(np.isin(sessions.items, np.flatnonzero(~scorer.known.numpy())).sum())
    print(f"rectools seed {seed}: {scorer.n_unknown} of {scorer.n_items} items outside its catalogue, "
          f"{hits} of {sessions.n_events} test events on them", flush=True)
    return result.metrics, seconds


def table(results: dict[str, list[dict]]) -> str:
    keys = [f"{m}@{k}" for k in CUTOFFS for m in ("recall", "mrr")]
    lines = ["| implementation | seed | " + " | ".join(k.replace("recall", "R").replace("mrr", "M") for k in keys) + " | train s |",
             "|" + "---|" * (3 + len(keys))]
    for name, runs in results.items():
        for r in runs:
            lines.append(f"| {name} | {r['seed']} | " + " | ".join(f"{r[k]:.4f}" for k in keys) + f" | {r['seconds']:.0f} |")
        mean = {k: np.mean([r[k] for r in runs]) for k in keys}
        std = {k: np.std([r[k] for r in runs], ddof=1) if len(runs) > 1 else float("nan") for k in keys}
        lines.append(f"| **{name}** | **mean ± sd** | " + " | ".join(f"{mean[k]:.4f} ± {std[k]:.4f}" for k in keys) + " | |")
    return "\n".join(lines)


def verdict(results: dict[str, list[dict]]) -> str:
    ours, theirs = results["ours"], results["rectools"]
    out = []
    for key in ("recall@20", "mrr@20"):
        a, b = np.array([r[key] for r in ours]), np.array([r[key] for r in theirs])
        diff = a.mean() - b.mean()
        noise = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)) if min(len(a), len(b)) > 1 else float("nan")
        spread = max(a.max() - a.min(), b.max() - b.min())
        out.append(
            f"{key}: ours {a.mean():.4f} vs RecTools {b.mean():.4f} ({a.mean() / b.mean():.1%}); difference {diff:+.4f}, "
            f"standard error of the difference {noise:.4f} ({abs(diff) / noise:.1f} SE), largest seed-to-seed spread {spread:.4f}"
        )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--max-len", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.001)
    ap.add_argument("--only", choices=["ours", "rectools"], help="run one implementation only")
    ap.add_argument("--json", type=Path, help="write all results here")
    ap.add_argument("--merge", type=Path, nargs="+", help="print the table of earlier --json files instead of training")
    args = ap.parse_args()
    if args.merge:
        results = {}
        for path in args.merge:
            for name, runs in json.loads(path.read_text()).items():
                results.setdefault(name, []).extend(runs)
        print(table(results))
        if len(results) == 2:
            print()
            print(verdict(results))
        return
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)  # both implementations on one core (the machine is shared)
    train_file = args.data / "yoochoose-clicks-100k_train_tr.txt.gz"
    valid_file = args.data / "yoochoose-clicks-100k_train_valid.txt.gz"
    params = SASRecParams(
        hidden_size=64, n_blocks=2, n_heads=2, ff_size=64, max_len=args.max_len, dropout_p=0.2,
        loss="cross-entropy", learning_rate=args.lr, batch_size=args.batch_size, n_epochs=args.epochs,
    )
    print(f"hyper-parameters: {params}", flush=True)
    from gru4rec.data.sessions import load_training_data

    _, item_map, _, _ = load_training_data(train_file)
    results: dict[str, list[dict]] = {}
    for name in ("ours", "rectools"):
        if args.only and name != args.only:
            continue
        for seed in args.seeds:
            if name == "ours":
                metrics, seconds = run_ours(train_file, valid_file, params, seed)
            else:
                metrics, seconds = run_rectools(train_file, valid_file, params, seed, item_map)
            results.setdefault(name, []).append({"seed": seed, "seconds": seconds, **metrics})
            print(f"{name} seed {seed}: recall@20 {metrics['recall@20']:.4f} mrr@20 {metrics['mrr@20']:.4f} ({seconds:.0f} s)", flush=True)
            if args.json:
                args.json.write_text(json.dumps(results, indent=2))
    print()
    print(table(results))
    if len(results) == 2:
        print()
        print(verdict(results))


if __name__ == "__main__":
    main()
