"""`gru4rec compare` and `gru4rec tune` on tiny synthetic data."""

from __future__ import annotations

import csv
import json

import numpy as np
import optuna
import pandas as pd
import pytest

from gru4rec.cli import main
from gru4rec.training.params import HyperParams, builtin_names, load_params
from gru4rec.foundation.errors import UserError
from gru4rec.training.run import train
from gru4rec.tuning.search import builtin_spaces, load_space

TINY = {"layers": (16,), "n_epochs": 1, "n_sample": 16, "batch_size": 16}


def write_sessions(path, sessions, t0, first_id=0):
    rows = [(sid, f"i{item}", t0 + sid * 100 + j) for sid, items in enumerate(sessions, start=first_id) for j, item in enumerate(items)]
    pd.DataFrame(rows, columns=["SessionId", "ItemId", "Time"]).to_csv(path, sep="\t", index=False)
    return path


@pytest.fixture
def split(tmp_path):
    rng = np.random.default_rng(1)
    n_items = 30

    def session():
        start, length = rng.integers(0, n_items), rng.integers(2, 7)
        return [(start + j) % n_items for j in range(length)]

    train_file = write_sessions(tmp_path / "train.tsv", [session() for _ in range(120)] + [list(range(n_items))], 1e6)
    valid_file = write_sessions(tmp_path / "valid.tsv", [session() for _ in range(30)], 2e6, first_id=10_000)
    return train_file, valid_file


def test_compare_models_and_baselines(tmp_path, split, capsys):
    train_file, valid_file = split
    train(train_file, tmp_path / "gru", HyperParams(**TINY), device="cpu")
    out = tmp_path / "cmp"
    rc = main([
        "compare", str(valid_file), "--model", f"gru={tmp_path / 'gru'}", "--baseline", "pop", "sr",
        "--baseline", "vsknn:k=10", "--train", str(train_file), "--out", str(out), "--cutoffs", "1", "5", "10", "-q",
    ])
    assert rc == 0
    report = json.loads((out / "comparison.json").read_text())
    assert list(report["entries"]) == ["gru", "pop", "sr", "vsknn:k=10"]
    for entry in report["entries"].values():
        assert {"recall@10", "mrr@10", "ndcg@10", "coverage@10", "popularity@10"} <= set(entry["metrics"])
        assert entry["n_events"] == report["entries"]["pop"]["n_events"]  # same test predictions
    assert report["entries"]["sr"]["metrics"]["recall@1"] > report["entries"]["pop"]["metrics"]["recall@1"]
    md = (out / "comparison.md").read_text()
    assert "| gru |" in md and "| vsknn:k=10 |" in md and "Recall@10" in md
    assert (out / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert "| pop |" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--baseline", "pop"], "--baseline needs --train"),
        ([], "nothing to compare"),
        (["--model", "just-a-dir"], "expected NAME=MODEL_DIR"),
        (["--model", "m=/no/such/dir"], "model directory not found"),
        (["--baseline", "pop", "pop", "--train", "X"], "repeated: pop"),
        (["--baseline", "popp", "--train", "X"], "unknown baseline"),
    ],
)
def test_compare_bad_input(tmp_path, split, caplog, argv, message):
    rc = main(["compare", str(split[1]), "--out", str(tmp_path / "o"), *argv])
    assert rc == 2
    assert message in caplog.text


SPACE = """
loss = "cross-entropy"
layers = [8]
n_sample = 16
n_epochs = 1

[learning_rate]
type = "float"
low = 0.01
high = 0.3
log = true

[batch_size]
type = "categorical"
choices = [8, 16]

[dropout_p_hidden]
type = "float"
low = 0.0
high = 0.5
step = 0.1
"""


def test_tune_writes_best_params_and_resumes(tmp_path, split, capsys):
    train_file, valid_file = split
    space = tmp_path / "space.toml"
    space.write_text(SPACE)
    out = tmp_path / "tune"
    argv = ["tune", str(train_file), str(valid_file), "--space", str(space), "--out", str(out), "--device", "cpu", "-q"]
    assert main([*argv, "--trials", "2"]) == 0
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert len(rows) == 2 and all(r["state"] == "complete" for r in rows)
    best = load_params(str(out / "best_params.toml"))  # what `gru4rec train --params` reads
    assert best.layers == (8,) and best.n_epochs == 1 and best.batch_size in (8, 16)
    summary = json.loads((out / "tune.json").read_text())
    assert summary["best_value"] == max(float(r["mrr@20"]) for r in rows)
    assert "mrr@20" in capsys.readouterr().out
    # a run killed mid-trial leaves it RUNNING: the next run fails it and retries its parameters
    study = optuna.load_study(study_name="gru4rec", storage=f"sqlite:///{out / 'study.db'}")
    study.ask({"learning_rate": optuna.distributions.FloatDistribution(0.01, 0.3, log=True)})
    assert main([*argv, "--trials", "3"]) == 0
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["state"] for r in rows] == ["complete", "complete", "fail", "complete"]
    assert main([*argv, "--trials", "3"]) == 0  # already done: nothing new
    assert len(list(csv.DictReader((out / "trials.csv").open()))) == 4


BAD_SPACES = [
    ("[learnin_rate]\ntype = 'float'\nlow = 0.1\nhigh = 0.2\n", "did you mean 'learning_rate'"),
    ("[learning_rate]\ntype = 'uniform'\nlow = 0.1\nhigh = 0.2\n", "type must be one of"),
    ("[learning_rate]\ntype = 'float'\nlow = 0.3\nhigh = 0.2\n", "need low < high"),
    ("[dropout_p_hidden]\ntype = 'float'\nlow = 0.0\nhigh = 1.5\n", "not a valid dropout_p_hidden"),
    ("[layers]\ntype = 'categorical'\nchoices = []\n", "non-empty list"),
    ("[batch_size]\ntype = 'int'\nlow = 8\nhigh = 16.5\n", "must be an integer"),
    ("[batch_size]\ntype = 'int'\nlow = 8\nhigh = 16\nlog = true\nstep = 2\n", "cannot be combined"),
    ("[batch_size]\ntype = 'int'\nlow = 8\nhigh = 16\nstepp = 2\n", "unexpected key"),
    ("loss = 'xentropy'\n[batch_size]\ntype = 'int'\nlow = 8\nhigh = 16\n", "loss"),
    ("loss = 'cross-entropy'\n", "nothing to search"),
    ("[learning_rate\n", "not valid TOML"),
]


@pytest.mark.parametrize("text, message", BAD_SPACES)
def test_bad_space_files(tmp_path, text, message):
    path = tmp_path / "space.toml"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        load_space(str(path))


def test_tune_command_bad_input(tmp_path, split, caplog):
    train_file, valid_file = split
    base = ["tune", str(train_file), str(valid_file), "--out", str(tmp_path / "o"), "--trials", "1"]
    assert main([*base, "--space", str(tmp_path / "missing.toml")]) == 2
    assert "neither a space file nor a built-in space" in caplog.text
    assert main([*base, "--space", "xe", "--metric", "hits@7"]) == 2
    assert "expected recall@K, mrr@K or ndcg@K" in caplog.text
    missing_valid = ["tune", str(train_file), str(tmp_path / "nope.tsv"), *base[3:]]
    assert main([*missing_valid, "--space", "xe"]) == 2
    assert "file not found" in caplog.text


def test_builtin_spaces_load_and_are_not_parameter_sets():
    assert builtin_spaces() == ["bprmax", "sasrec", "xe"]
    assert "xe.space" not in builtin_names() and {"rsc15-xe", "retailrocket-bprmax"} <= set(builtin_names())
    for name in ("bprmax", "xe"):  # GRU4Rec's; sasrec's is tested with SASRec (tests/evaluation/test_sasrec_scorer.py)
        space = load_space(name, load_params("rsc15-xe"))
        assert {d.name for d in space.dimensions} >= {"layers", "learning_rate", "n_epochs"}
