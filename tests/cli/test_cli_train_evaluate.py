"""`gru4rec train` and `gru4rec evaluate` end to end through gru4rec.cli.main, and their handling of
bad input: exit code 2 and a one-line message naming the problem, never a traceback."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from conftest import require_shared
from gru4rec.model.checkpoint import METADATA_FILE, RESUME_FILE
from gru4rec.cli import main

N_ITEMS = 30


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cyclic_rows(n_sessions: int, seed: int, t0: float, prefix: str = "s") -> list[tuple[str, str, float]]:
    """Sessions that click item (i + 1) mod N after item i; item ids are strings like 'item7'."""
    rng = np.random.default_rng(seed)
    rows, t = [], t0
    for s in range(n_sessions):
        start, n = int(rng.integers(N_ITEMS)), int(rng.integers(3, 9))
        for k in range(n):
            rows.append((f"{prefix}{s}", f"item{(start + k) % N_ITEMS}", t))
            t += 5.0
    return rows


def write(path, rows, header="SessionId\tItemId\tTime"):
    path.write_text(header + "\n" + "".join(f"{s}\t{i}\t{t}\n" for s, i, t in rows))
    return str(path)


TINY = ["--set", "layers=[24]", "--set", "batch_size=8", "--set", "n_sample=16", "--set", "learning_rate=0.1",
        "--set", "n_epochs=3", "--set", "sample_cache_size=16000", "--device", "cpu", "--seed", "1", "-q"]
# (a small pre-drawn negative buffer: the default 10M draws would dominate these tiny runs)


@pytest.fixture(scope="module")
def data(tmp_path_factory, one_torch_thread):
    d = tmp_path_factory.mktemp("cli")
    train = write(d / "train.tsv", cyclic_rows(250, 0, 1_000_000.0))
    valid = write(d / "valid.tsv", cyclic_rows(20, 1, 3_000_000.0, prefix="v"))
    test_rows = cyclic_rows(30, 2, 5_000_000.0, prefix="t")
    # two test events with items the model never saw: dropped, counted, no crash
    test_rows.insert(3, (test_rows[3][0], "never-seen-1", test_rows[3][2] - 0.5))
    test_rows.append(("t-new", "never-seen-2", 9_000_000.0))
    test = write(d / "test.tsv", test_rows)
    model = d / "model"
    assert main(["train", train, "--out", str(model), "--valid", valid, *TINY]) == 0
    return {"dir": d, "train": train, "valid": valid, "test": test, "model": str(model)}


def test_train_writes_a_model_directory(data):
    meta = json.loads((data["dir"] / "model" / METADATA_FILE).read_text())
    assert meta["model"]["layers"] == [24] and meta["training"]["settings"]["n_epochs"] == 3
    assert len(meta["item_ids"]) == N_ITEMS
    assert meta["training"]["complete"] is True
    assert len(meta["training"]["epochs"]) == 3
    assert 1 <= meta["training"]["best_epoch"] <= 3
    assert not (data["dir"] / "model" / RESUME_FILE).exists()
    state = torch.load(data["dir"] / "model" / "model.pt", weights_only=True)
    assert state["Wy.weight"].shape == (N_ITEMS, 24)


def test_evaluate_end_to_end_json(data, capsys):
    out = data["dir"] / "result.json"
    code = main(["evaluate", data["model"], data["test"], "--json", str(out), "--device", "cpu", "-q"])
    assert code == 0
    report = json.loads(out.read_text())
    metrics = report["metrics"]
    for key in ("recall@20", "mrr@20", "recall@1", "mrr@1", "recall@5", "mrr@5", "recall@10", "mrr@10"):
        assert key in metrics and 0.0 <= metrics[key] <= 1.0
    assert metrics["recall@1"] == metrics["mrr@1"]
    assert report["n_unknown_dropped"] == 2
    assert metrics["recall@5"] > 0.8  # the cyclic pattern was learnt (chance: 5/30)
    stdout = capsys.readouterr().out
    assert "recall" in stdout and "mrr" in stdout


def test_evaluate_tie_modes_and_cutoffs(data):
    results = {}
    for ties in ("standard", "median", "conservative"):
        out = data["dir"] / f"r-{ties}.json"
        assert main(["evaluate", data["model"], data["test"], "--ties", ties, "--cutoffs", "1", "3",
                     "--json", str(out), "--device", "cpu", "-q"]) == 0
        results[ties] = json.loads(out.read_text())["metrics"]
    assert set(results["standard"]) >= {"recall@1", "recall@3", "mrr@1", "mrr@3"}
    assert results["standard"]["recall@3"] >= results["median"]["recall@3"] >= results["conservative"]["recall@3"]


def recorded_parameters(model_dir) -> dict:
    """Every parameter as the model directory records it: the network's and the training's."""
    meta = json.loads((model_dir / METADATA_FILE).read_text())
    return {**meta["model"], **meta["training"]["settings"]}


def test_train_with_builtin_and_file_params(data, tmp_path):
    params = tmp_path / "p.toml"
    params.write_text('loss = "bpr-max"\nlayers = [12]\nbatch_size = 8\nn_sample = 8\nn_epochs = 1\nsample_cache_size = 8000\n')
    out = tmp_path / "m1"
    assert main(["train", data["train"], "--out", str(out), "--params", str(params), "--device", "cpu", "-q"]) == 0
    hp = recorded_parameters(out)
    assert hp["loss"] == "bpr-max" and hp["layers"] == [12] and hp["bpreg"] == 1.0
    out = tmp_path / "m2"
    assert main(["train", data["train"], "--out", str(out), "--params", "retailrocket-bprmax",
                 "--set", "layers=[10]", "--set", "n_sample=8", "--set", "n_epochs=1", "--set", "sample_cache_size=8000",
                 "--device", "cpu", "-q"]) == 0
    hp = recorded_parameters(out)
    assert hp["loss"] == "bpr-max" and hp["bpreg"] == 1.95 and hp["batch_size"] == 80 and hp["layers"] == [10]


def test_resume_of_finished_run_is_refused(data, caplog):
    with caplog.at_level(logging.ERROR):
        code = main(["train", data["train"], "--out", data["model"], "--resume", *TINY])
    assert code == 2
    assert "nothing to resume" in caplog.text


# ---- bad input: exit code 2, a message naming the problem, no traceback ----
def run_fails(argv, caplog, capsys, *expected):
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, (argv, caplog.text, captured.err)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors, "no error message was logged"
    text = " ".join(errors)
    for part in expected:
        assert part in text, f"{part!r} not in {text!r}"
    assert "Traceback" not in captured.err and "Traceback" not in caplog.text
    return text


@pytest.mark.parametrize(
    "case",
    ["missing", "empty", "header-only", "wrong-header", "bad-time", "singles", "directory"],
)
def test_train_bad_file(case, tmp_path, caplog, capsys):
    path = tmp_path / f"{case}.tsv"
    expected = [path.name]
    if case == "empty":
        path.write_text("")
    elif case == "header-only":
        write(path, [])
        expected.append("no events")
    elif case == "wrong-header":
        write(path, [("a", "x", 1.0)], header="session\titem\ttime")
        expected.append("SessionId")
    elif case == "bad-time":
        write(path, [("a", "x", 1.0), ("a", "y", "yesterday")])
        expected += ["row 3", "Time"]
    elif case == "singles":
        write(path, [("a", "x", 1.0), ("b", "y", 2.0)])
        expected.append("two or more events")
    elif case == "directory":
        path.mkdir()
    else:
        expected.append("not found")
    run_fails(["train", str(path), "--out", str(tmp_path / "m"), *TINY], caplog, capsys, *expected)
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--set", "learnig_rate=0.1"], ["learnig_rate", "did you mean 'learning_rate'"]),
        (["--set", "dropout_p_hidden=1.0"], ["dropout_p_hidden"]),
        (["--set", "layers=[0]"], ["layers"]),
        (["--set", "batch_size"], ["batch_size", "key=value"]),
        (["--params", "no-such-set"], ["no-such-set"]),
        (["--device", "tpu"], ["--device", "tpu"]),
        (["--device", "cuda:abc"], ["--device"]),
        (["--metric", "auc@20"], ["--metric", "auc@20"]),
    ],
)
def test_train_bad_options(args, expected, data, tmp_path, caplog, capsys):
    argv = ["train", data["train"], "--out", str(tmp_path / "m"), "--valid", data["valid"], *TINY, *args]
    run_fails(argv, caplog, capsys, *expected)
    assert not (tmp_path / "m").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_requested_without_cuda(data, tmp_path, caplog, capsys):
    argv = ["train", data["train"], "--out", str(tmp_path / "m"), *TINY, "--device", "cuda"]
    run_fails(argv, caplog, capsys, "CUDA is not available")


def test_diverging_training_is_a_clear_error(data, tmp_path, caplog, capsys):
    argv = ["train", data["train"], "--out", str(tmp_path / "m"), *TINY, "--set", "learning_rate=1e38", "--set", "momentum=0.9"]
    run_fails(argv, caplog, capsys, "diverged", "learning_rate")


def test_evaluate_model_of_another_format_version(data, tmp_path, caplog, capsys):
    import shutil

    model = tmp_path / "old-model"
    shutil.copytree(data["model"], model)
    meta = json.loads((model / METADATA_FILE).read_text())
    meta["format_version"] = 99
    (model / METADATA_FILE).write_text(json.dumps(meta))
    run_fails(["evaluate", str(model), data["test"], "--device", "cpu"], caplog, capsys, "format version", "99")


def test_evaluate_bad_input(data, tmp_path, caplog, capsys):
    unknown_only = write(tmp_path / "alien.tsv", [("a", "zz1", 1.0), ("a", "zz2", 2.0)])
    run_fails(["evaluate", data["model"], unknown_only, "--device", "cpu"], caplog, capsys, "alien.tsv")
    run_fails(["evaluate", str(tmp_path / "no-model"), data["test"], "--device", "cpu"], caplog, capsys, "no-model")
    (tmp_path / "not-a-model").mkdir()
    run_fails(["evaluate", str(tmp_path / "not-a-model"), data["test"], "--device", "cpu"], caplog, capsys, "not a model directory")
    run_fails(["evaluate", data["model"], str(tmp_path / "missing.tsv"), "--device", "cpu"], caplog, capsys, "missing.tsv")
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    run_fails(["evaluate", data["model"], str(empty), "--device", "cpu"], caplog, capsys, "empty.tsv")
    run_fails(["evaluate", data["model"], data["test"], "--cutoffs", "0", "--device", "cpu"], caplog, capsys, "cut-off")
    run_fails(["evaluate", data["model"], data["test"], "--cutoffs", "500", "--device", "cpu"], caplog, capsys, "500")
    run_fails(["evaluate", data["model"], data["test"], "--batch-size", "0", "--device", "cpu"], caplog, capsys, "--batch-size")
    run_fails(["evaluate", data["model"], data["test"], "--device", "gpu"], caplog, capsys, "--device")


def test_truncated_gzip_is_a_one_line_error(data, tmp_path, caplog, capsys):
    """A .gz cut short (a copy interrupted) is exit 2 and one line naming the file, in train and evaluate."""
    import gzip

    rows = cyclic_rows(20000, 3, 1_000_000.0)
    body = gzip.compress(("SessionId\tItemId\tTime\n" + "".join(f"{s}\t{i}\t{t}\n" for s, i, t in rows)).encode())
    cut = tmp_path / "cut.tsv.gz"
    cut.write_bytes(body[: len(body) // 2])
    text = run_fails(["train", str(cut), "--out", str(tmp_path / "m"), *TINY], caplog, capsys, "cut.tsv.gz", "truncated")
    assert "\n" not in text and not (tmp_path / "m").exists()
    text = run_fails(["evaluate", data["model"], str(cut), "--device", "cpu"], caplog, capsys, "cut.tsv.gz", "truncated")
    assert "\n" not in text


def test_nan_time_is_not_called_empty(tmp_path, caplog, capsys):
    path = write(tmp_path / "nan.tsv", [("a", "x", 1.0), ("a", "y", "nan"), ("a", "z", 3.0)])
    text = run_fails(["train", path, "--out", str(tmp_path / "m"), *TINY], caplog, capsys, "row 3", "Time nan is not a number")
    assert "empty" not in text


def test_rsc15_100k_short_run(tmp_path):
    """One short real run: train_tr -> train_valid with the RSC15 XE setting, shrunk for speed."""
    folder = require_shared("rsc15_100k")
    train = folder / "yoochoose-clicks-100k_train_tr.txt.gz"
    valid = folder / "yoochoose-clicks-100k_train_valid.txt.gz"
    model = tmp_path / "m"
    argv = ["train", str(train), "--out", str(model), "--params", "rsc15-xe", "--set", "layers=[64]",
            "--set", "n_sample=512", "--set", "n_epochs=1", "--set", "sample_cache_size=1000000", "--device", "cpu", "-q"]
    assert main(argv) == 0
    out = tmp_path / "r.json"
    assert main(["evaluate", str(model), str(valid), "--json", str(out), "--device", "cpu", "-q"]) == 0
    report = json.loads(out.read_text())
    metrics = report["metrics"]
    assert report["n_events"] > 1000
    assert metrics["recall@1"] == metrics["mrr@1"]
    # one epoch of a shrunk model already gets about 0.54 / 0.30 here (measured with seed 42; the
    # published full-data best is 0.73 / 0.32): a broken trainer or evaluator lands far below
    assert metrics["recall@20"] > 0.45, metrics
    assert metrics["mrr@20"] > 0.22, metrics
