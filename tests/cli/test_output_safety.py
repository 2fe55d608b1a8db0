"""Every command that writes checks where it writes before the long work: it replaces only an empty
directory or one it wrote itself, never a user's directory, a file or the working directory, and a
place it cannot write is a one-line error with exit code 2 before any training or evaluation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gru4rec.cli import main
from gru4rec.foundation.atomic import MARKER
from places import unwritable

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ["--set", "layers=[8]", "--set", "batch_size=8", "--set", "n_sample=8", "--set", "sample_cache_size=2000",
        "--set", "n_epochs=1", "--device", "cpu", "-q"]


def write_log(path: Path, n_sessions: int = 120, t0: float = 1_396_310_400.0) -> Path:
    lines = ["SessionId\tItemId\tTime"]
    for s in range(n_sessions):
        lines += [f"s{s}\titem{(s + k) % 20}\t{t0 + 600 * s + 5 * k}" for k in range(3 + s % 4)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("safety")
    train, test = write_log(d / "train.tsv"), write_log(d / "test.tsv", 30, 1_500_000_000.0)
    model = d / "model"
    assert main(["train", str(train), "--out", str(model), *TINY]) == 0
    return {"dir": d, "train": train, "test": test, "model": model}


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def fails(capsys, argv: list[str], *expected: str) -> str:
    rc = main(argv)
    captured = capsys.readouterr()
    assert rc == 2, captured
    assert "Traceback" not in captured.err
    for text in expected:
        assert text in captured.err, (text, captured.err)
    return captured.out


# -- defect 1: a user's directory or file is never replaced ----------------------------------------------


def test_train_into_the_directory_holding_the_training_file_is_refused(files, tmp_path, capsys):
    d = tmp_path / "d"
    d.mkdir()
    train = d / "train.tsv"
    train.write_bytes(files["train"].read_bytes())
    (d / "notes.txt").write_text("my notes")
    before = snapshot(d)
    fails(capsys, ["train", str(train), "--out", str(d), *TINY], f"--out {d}: exists, is not empty and is not the output")
    assert snapshot(d) == before


def test_train_out_dot_and_an_existing_file_are_refused(files, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(files["dir"])
    before = snapshot(files["dir"])
    fails(capsys, ["train", str(files["train"]), "--out", ".", *TINY], "--out .: is the current directory")
    precious = files["dir"] / "precious.txt"
    precious.write_text("keep me")
    fails(capsys, ["train", str(files["train"]), "--out", "precious.txt", *TINY], "exists and is not a directory")
    assert precious.read_text() == "keep me"
    precious.unlink()
    assert snapshot(files["dir"]) == before
    assert not [p for p in files["dir"].iterdir() if p.name.startswith(".precious")]


def test_train_replaces_its_own_model_directory_but_not_with_extra_files(files, tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["train", str(files["train"]), "--out", str(out), *TINY]) == 0
    assert (out / MARKER).exists()
    assert main(["train", str(files["train"]), "--out", str(out), *TINY]) == 0
    (out / "evaluation-notes.md").write_text("mine")
    fails(capsys, ["train", str(files["train"]), "--out", str(out), *TINY], "also holds files gru4rec train did not write (evaluation-notes.md)")
    assert (out / "evaluation-notes.md").read_text() == "mine"


def test_prepare_and_compare_share_the_rule(files, tmp_path, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x.csv").write_text("1")
    fails(capsys, ["prepare", str(files["train"]), "--out", str(foreign)], "is not the output of an earlier gru4rec prepare")
    fails(capsys, ["compare", str(files["test"]), "--model", f"m={files['model']}", "--out", str(foreign)],
          "is not the output of an earlier gru4rec compare")
    fails(capsys, ["compare", str(files["test"]), "--model", f"m={files['model']}", "--out", str(files["model"])],
          "holds a gru4rec model directory, not a comparison directory")
    assert (foreign / "x.csv").read_text() == "1"
    out = tmp_path / "cmp"
    for _ in range(2):  # its own output is replaced as a whole
        assert main(["compare", str(files["test"]), "--model", f"m={files['model']}", "--out", str(out), "-q"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "comparison.md", "comparison.json", "comparison.png"])


# -- defect 4: a place that cannot be written fails before the work ------------------------------------


def test_unwritable_outputs_fail_before_the_work(files, tmp_path, capsys):
    ro = unwritable(tmp_path)
    train, test, model = map(str, (files["train"], files["test"], files["model"]))
    cases = [
        (["train", train, "--out", f"{ro}/m", *TINY], f"--out {ro}/m: cannot write in {ro}"),
        (["evaluate", model, test, "--json", f"{ro}/r.json"], f"--json {ro}/r.json: cannot write in {ro}"),
        (["evaluate", model, test, "--plot", f"{ro}/r.png"], f"--plot {ro}/r.png: cannot write in {ro}"),
        (["prepare", train, "--out", f"{ro}/p"], f"--out {ro}/p: cannot write in {ro}"),
        (["export", model, "--format", "torchscript", "--out", f"{ro}/m.pt"], f"--out {ro}/m.pt: cannot write in {ro}"),
        (["compare", test, "--model", f"m={model}", "--out", f"{ro}/c"], f"--out {ro}/c: cannot write in {ro}"),
        (["synth", "--events", "100", "--items", "10", "--out", f"{ro}/s.dat"], f"--out {ro}/s.dat: cannot write in {ro}"),
        (["tune", train, test, "--space", "xe", "--trials", "1", "--out", f"{ro}/t"], f"--out {ro}/t: cannot write in {ro}"),
    ]
    for argv, message in cases:
        out = fails(capsys, argv, message)
        assert out == "", argv  # nothing was printed: it failed before evaluating


def test_evaluate_json_naming_a_directory(files, tmp_path, capsys):
    out = fails(capsys, ["evaluate", str(files["model"]), str(files["test"]), "--json", str(tmp_path)],
                f"--json {tmp_path}: is a directory; give a file name")
    assert out == ""


def test_train_seed_out_of_range(files, tmp_path, capsys):
    fails(capsys, ["train", str(files["train"]), "--out", str(tmp_path / "m"), *TINY, "--seed", "1180591620717411303424"],
          "--seed must be an integer from 0 to")
    fails(capsys, ["train", str(files["train"]), "--out", str(tmp_path / "m"), *TINY, "--seed", "-1"], "--seed must be")
    assert not (tmp_path / "m").exists()


def test_tune_seed_out_of_range(files, tmp_path, capsys):
    fails(capsys, ["tune", str(files["train"]), str(files["test"]), "--space", "xe", "--trials", "1",
                   "--out", str(tmp_path / "t"), "--seed", str(2**40)], "--seed must be an integer from 0 to 4294967295")
    assert not (tmp_path / "t").exists()


def test_tune_with_a_bad_storage_leaves_no_output_directory(files, tmp_path, capsys):
    out = tmp_path / "tune"
    fails(capsys, ["tune", str(files["train"]), str(files["test"]), "--space", "xe", "--trials", "1",
                   "--out", str(out), "--storage", "bogus://x"], "--storage bogus://x: cannot open the study")
    assert not out.exists()


def test_tune_refuses_a_foreign_directory(files, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("x")
    fails(capsys, ["tune", str(files["train"]), str(files["test"]), "--space", "xe", "--trials", "1", "--out", str(out)],
          "is not the output of an earlier gru4rec tune")
    assert os.listdir(out) == ["thesis.tex"]
