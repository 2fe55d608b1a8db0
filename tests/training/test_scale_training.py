"""Data-parallel training (torchrun + gloo, 2 processes on this machine) and warm-start retraining."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import REPO, require_shared
from gru4rec.data.session_files import read_session_file, write_session_file
from gru4rec.model.checkpoint import load_checkpoint
from gru4rec.cli import main
from gru4rec.training.params import HyperParams, load_params
from gru4rec.data.sessions import ItemMap, Sessions, load_eval_data
from gru4rec.training.distributed import shard_sessions
from gru4rec.foundation.errors import UserError
from gru4rec.evaluation.protocol import ModelScorer, evaluate
from gru4rec.training.run import train
from gru4rec.training.trainer import Trainer
from gru4rec.training.warm_start import warm_start_model

PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_shards_partition_sessions_in_time_order():
    lengths = [3, 1, 4, 2, 5, 2, 2]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    sessions = Sessions(np.arange(offsets[-1]), offsets, np.array([f"s{i}" for i in range(len(lengths))], dtype=object))
    shards = [shard_sessions(sessions, rank, 3) for rank in range(3)]
    assert [list(s.session_ids) for s in shards] == [["s0", "s3", "s6"], ["s1", "s4"], ["s2", "s5"]]
    for shard in shards:  # each shard holds its sessions' events, unchanged and in order
        for k, sid in enumerate(shard.session_ids):
            s = int(sid[1:])
            assert list(shard.items[shard.offsets[k] : shard.offsets[k + 1]]) == list(range(offsets[s], offsets[s + 1]))
    assert sum(s.n_events for s in shards) == sessions.n_events


REPLICA_SCRIPT = r"""
import sys, numpy as np, torch, torch.distributed as dist
from gru4rec.training.params import HyperParams
from gru4rec.data.sessions import Sessions
from gru4rec.training.trainer import Trainer
dist.init_process_group("gloo")
out = sys.argv[1]
rng = np.random.default_rng(0)
lengths = rng.integers(2, 7, size=40)
offsets = np.concatenate([[0], np.cumsum(lengths)])
sessions = Sessions(rng.integers(0, 30, offsets[-1]), offsets, np.arange(40).astype(str).astype(object))
for step in ("fused", "eager"):
    for embedding in (0, 6):
        params = HyperParams(layers=(8,), batch_size=4, n_sample=5, learning_rate=0.1, momentum=0.3, n_epochs=1,
                             loss="bpr-max", constrained_embedding=embedding == 0, embedding=embedding)
        # every rank gets the SAME data and seed, once as replicas (world 2) and once on its own
        for world in (2, 1):
            trainer = Trainer(params, sessions, np.arange(1, 31), torch.device("cpu"), seed=7, step=step,
                              world_size=world, is_main=dist.get_rank() == 0)
            trainer.train_epoch(1)
            if dist.get_rank() == 0:
                torch.save(trainer.model.state_dict(), f"{out}/{step}-{embedding}-{world}.pt")
dist.destroy_process_group()
"""


def test_two_replicas_on_identical_data_match_one_process_exactly(tmp_path):
    """The reducer averages dense gradients and gathers sparse rows: with identical inputs on both
    ranks the update must be exactly the single-process update (same rows, same values)."""
    script = tmp_path / "replica.py"
    script.write_text(REPLICA_SCRIPT)
    run = torchrun([str(script), str(tmp_path)])
    assert run.returncode == 0, run.stderr[-3000:]
    for step in ("fused", "eager"):
        for embedding in (0, 6):
            two = torch.load(tmp_path / f"{step}-{embedding}-2.pt", weights_only=True)
            one = torch.load(tmp_path / f"{step}-{embedding}-1.pt", weights_only=True)
            for name in one:
                torch.testing.assert_close(two[name], one[name], rtol=1e-5, atol=1e-6, msg=f"{step} {embedding} {name}")


def test_distributed_run_reaches_single_process_accuracy(tmp_path):
    data = require_shared("rsc15_100k")
    train_file = data / "yoochoose-clicks-100k_train_tr.txt.gz"
    valid_file = data / "yoochoose-clicks-100k_train_valid.txt.gz"
    args = ["-m", "gru4rec.cli", "-q", "train", str(train_file), "--valid", str(valid_file), "--params", "rsc15-xe",
            "--set", "n_epochs=2", "--device", "cpu", "--seed", "1"]
    run = torchrun([*args, "--out", str(tmp_path / "dist"), "--distributed"])
    assert run.returncode == 0, run.stderr[-3000:]
    assert main(args[2:] + ["--out", str(tmp_path / "single")]) == 0

    def final(name):
        return json.loads((tmp_path / name / "metadata.json").read_text())["training"]

    dist_run, single_run = final("dist"), final("single")
    assert dist_run["world_size"] == 2 and dist_run["complete"]
    assert all(e["events"] == single_run["epochs"][0]["events"] for e in dist_run["epochs"])  # every event, once
    for metric in ("recall@20", "mrr@20"):
        d, s = dist_run["epochs"][-1]["valid"][metric], single_run["epochs"][-1]["valid"][metric]
        assert d > 0.9 * s, f"{metric}: distributed {d:.4f} vs single {s:.4f}"
    # rank 0's checkpoint loads and serves
    checkpoint = load_checkpoint(tmp_path / "dist")
    assert len(checkpoint.item_map) == single_run["items"]


def test_distributed_needs_torchrun(tmp_path, capsys):
    tiny = tmp_path / "t.tsv"
    pd.DataFrame({"SessionId": [1, 1, 2, 2], "ItemId": [1, 2, 2, 1], "Time": [1, 2, 3, 4]}).to_csv(tiny, sep="\t", index=False)
    env = {k: os.environ.pop(k) for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k in os.environ}
    try:
        assert main(["train", str(tiny), "--out", str(tmp_path / "m"), "--distributed", "--device", "cpu"]) == 2
    finally:
        os.environ.update(env)
    assert "torchrun" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


# ---- warm start ----
@pytest.fixture(scope="module")
def time_windows(tmp_path_factory):
    """rsc15_100k train_tr cut in two by session start time: an older and a newer window."""
    data = require_shared("rsc15_100k")
    df = read_session_file(data / "yoochoose-clicks-100k_train_tr.txt.gz")
    start = df.groupby("SessionId")["Time"].transform("min")
    cut = df["Time"].quantile(0.6)
    root = tmp_path_factory.mktemp("windows")
    write_session_file(df[start < cut], root / "old.tsv")
    write_session_file(df[start >= cut], root / "new.tsv")
    params = load_params("rsc15-xe", ["n_epochs=1"])
    train(root / "old.tsv", root / "base", params, device="cpu", seed=1)
    return root, data / "yoochoose-clicks-100k_train_valid.txt.gz"


def test_warm_start_keeps_known_rows_and_adds_new_items(time_windows):
    root, _ = time_windows
    base = load_checkpoint(root / "base")
    new_ids = read_session_file(root / "new.tsv")["ItemId"].unique()
    extended = ItemMap.from_ids(list(base.item_map.ids) + [i for i in new_ids if i not in set(base.item_map.ids)])
    model, summary = warm_start_model(base, extended, base.config)
    n_old = len(base.item_map)
    assert summary["kept_items"] == n_old and summary["new_items"] == len(extended) - n_old > 0
    torch.testing.assert_close(model.Wy.weight[:n_old], base.model.Wy.weight, rtol=0, atol=0)
    torch.testing.assert_close(model.By.weight[:n_old], base.model.By.weight, rtol=0, atol=0)
    for new, old in zip(model.cells.parameters(), base.model.cells.parameters()):
        torch.testing.assert_close(new, old, rtol=0, atol=0)
    assert torch.all(model.By.weight[n_old:] == base.model.By.weight.mean())


def test_warm_start_beats_cold_start_and_serves_new_items(time_windows, tmp_path):
    root, valid = time_windows
    one_epoch = ["--params", "rsc15-xe", "--set", "n_epochs=1", "--device", "cpu", "--seed", "1", "-q"]
    assert main(["train", str(root / "new.tsv"), "--out", str(tmp_path / "warm"), "--init-from", str(root / "base"), *one_epoch]) == 0
    assert main(["train", str(root / "new.tsv"), "--out", str(tmp_path / "cold"), *one_epoch]) == 0
    base, warm, cold = (load_checkpoint(p) for p in (root / "base", tmp_path / "warm", tmp_path / "cold"))

    new_items = set(warm.item_map.ids) - set(base.item_map.ids)
    assert new_items and set(base.item_map.ids) <= set(warm.item_map.ids)  # old items kept by default
    assert warm.metadata["training"]["init_from"]["new_items"] == len(new_items)
    new_index = torch.from_numpy(warm.item_map.lookup(sorted(new_items)))
    scores = warm.model.score(warm.model.step(new_index[:5], warm.model.init_hidden(5)))
    assert torch.isfinite(scores).all() and scores.shape == (5, len(warm.item_map))

    def metrics(checkpoint):
        sessions, unknown = load_eval_data(valid, checkpoint.item_map)
        return evaluate(ModelScorer(checkpoint.model), sessions, (20,), n_unknown=unknown).metrics

    warm_m, cold_m = metrics(warm), metrics(cold)
    assert warm_m["recall@20"] > cold_m["recall@20"] and warm_m["mrr@20"] > cold_m["mrr@20"], (warm_m, cold_m)


def test_warm_start_can_drop_vanished_items(time_windows, tmp_path):
    root, _ = time_windows
    args = ["train", str(root / "new.tsv"), "--out", str(tmp_path / "m"), "--init-from", str(root / "base"),
            "--drop-vanished-items", "--params", "rsc15-xe", "--set", "n_epochs=1", "--device", "cpu", "-q"]
    assert main(args) == 0
    model = load_checkpoint(tmp_path / "m")
    present = set(read_session_file(root / "new.tsv")["ItemId"])
    assert set(model.item_map.ids) == present
    assert model.metadata["training"]["init_from"]["dropped_items"] > 0


def test_warm_start_rejects_a_different_architecture(time_windows, tmp_path, capsys):
    root, _ = time_windows
    code = main(["train", str(root / "new.tsv"), "--out", str(tmp_path / "m"), "--init-from", str(root / "base"),
                 "--params", "rsc15-xe", "--set", "layers=[50]", "--device", "cpu"])
    assert code == 2
    assert "layers" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
