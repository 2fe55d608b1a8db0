"""Recall@20 and MRR@20 through the serving path: the approximate top-k index against exact scoring.

Trains (once, cached in --work-dir) a model on rsc15_100k train_tr with the rsc15-xe parameters, then
replays every train_valid session through the HTTP API of one app, click by click
(POST /v1/sessions/{id}/events, k=20), once with the index forced on (GRU4REC_RETRIEVAL=index) and
once with "exact": true, and scores each answer against the session's next click: Recall@20 (the
next item is among the 20) and MRR@20 (1/rank, 0 beyond 20). Events with items the model does not
know are left out as in `gru4rec evaluate`; the offline `evaluate` figures (full ranking) are printed
beside them for reference.

    python benchmarks/serve_accuracy.py [--epochs 10] [--nprobe N] [--candidates N]   # default: the service's
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data" / "rsc15_100k"


def train_model(work: Path, epochs: int) -> Path:
    from gru4rec.training.params import load_params
    from gru4rec.training.run import train

    out = work / f"rsc15-xe-{epochs}ep"
    if not (out / "metadata.json").exists() or (out / "resume.pt").exists():
        train(DATA / "yoochoose-clicks-100k_train_tr.txt.gz", out, load_params("rsc15-xe", [f"n_epochs={epochs}"]), device="cpu", seed=1)
    return out


def replay(api, sessions, ids: list[str], exact: bool) -> tuple[float, float, int]:
    """Recall@20 and MRR@20 of next-click predictions over every session, through the events endpoint."""
    hits = rr = 0.0
    n = 0
    for s in range(sessions.n_sessions):
        items = sessions.items[sessions.offsets[s] : sessions.offsets[s + 1]]
        for t in range(len(items) - 1):
            body = {"item_id": ids[items[t]], "k": 20, "exact": exact}
            answer = api.post(f"/v1/sessions/{'x' if exact else 'i'}-{s}/events", json=body).json()["items"]
            top = [x["item_id"] for x in answer]
            target = ids[items[t + 1]]
            if target in top:
                hits += 1
                rr += 1 / (top.index(target) + 1)
            n += 1
    return hits / n, rr / n, n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--nprobe", type=int, default=None, help="GRU4REC_INDEX_NPROBE (default: the service's)")
    ap.add_argument("--candidates", type=int, default=None, help="GRU4REC_INDEX_CANDIDATES (default: the service's)")
    ap.add_argument("--work-dir", type=Path, default=Path("/tmp/gru4rec-serve-accuracy"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    model = train_model(args.work_dir, args.epochs)

    from fastapi.testclient import TestClient

    from gru4rec.data.sessions import load_eval_data
    from gru4rec.evaluation.protocol import ModelScorer, evaluate
    from gru4rec.model.checkpoint import load_checkpoint
    from service.app import create_app
    from service.settings import Settings

    checkpoint = load_checkpoint(model)
    valid = DATA / "yoochoose-clicks-100k_train_valid.txt.gz"
    sessions, _ = load_eval_data(valid, checkpoint.item_map)
    offline = evaluate(ModelScorer(checkpoint.model), sessions, (20,), "conservative").metrics
    ids = checkpoint.item_map.ids.tolist()
    overrides = {k: v for k, v in (("index_nprobe", args.nprobe), ("index_candidates", args.candidates)) if v is not None}
    settings = Settings(model_dir=model, retrieval="index", reload_poll_s=0, max_sessions=10**6, **overrides)
    with TestClient(create_app(settings)) as api:
        retrieval = api.get("/v1/model").json()["retrieval"]
        started = time.perf_counter()
        index_r, index_m, n = replay(api, sessions, ids, exact=False)
        exact_r, exact_m, _ = replay(api, sessions, ids, exact=True)
        seconds = time.perf_counter() - started
    print(f"\nrsc15_100k train_tr -> train_valid, rsc15-xe {args.epochs} epochs, {len(ids)} items, {n} predictions "
          f"({seconds:.0f} s through the API); index: {retrieval['index']}\n")
    print("| scoring | Recall@20 | MRR@20 |")
    print("|---|---|---|")
    print(f"| offline `evaluate` (full ranking, conservative ties) | {offline['recall@20']:.4f} | {offline['mrr@20']:.4f} |")
    print(f"| serving path, exact | {exact_r:.4f} | {exact_m:.4f} |")
    print(f"| serving path, index forced on | {index_r:.4f} | {index_m:.4f} |")
    print(f"| index vs exact | {index_r / exact_r - 1:+.3%} | {index_m / exact_m - 1:+.3%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
