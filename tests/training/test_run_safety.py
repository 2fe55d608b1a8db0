"""A training run never writes garbage: a diverged epoch (non-finite loss or weights, or a network
whose scores overflow) stops it with exit 2 and leaves the last good epoch; --resume refuses another
--seed, which the resumed random streams could not honour."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gru4rec.cli import main
from gru4rec.foundation.errors import UserError
from gru4rec.model.checkpoint import METADATA_FILE, load_checkpoint
from gru4rec.model.config import ModelConfig
from gru4rec.model.network import GRU4Rec
from gru4rec.training import trainer as trainer_module
from gru4rec.training.run import check_not_diverged

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ["--set", "layers=[16]", "--set", "n_sample=16", "--set", "sample_cache_size=2000", "--device", "cpu", "-q"]


@pytest.fixture(scope="module")
def train_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("run") / "train.tsv"
    lines = ["SessionId\tItemId\tTime"]
    for s in range(300):
        lines += [f"s{s}\titem{(s * 3 + k) % 40}\t{1e9 + 600 * s + 5 * k}" for k in range(2 + s % 6)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_huge_learning_rate_stops_training_instead_of_writing_garbage(train_file, tmp_path, caplog):
    out = tmp_path / "m"
    rc = main(["train", str(train_file), "--out", str(out), "--set", "learning_rate=1e30", "--set", "n_epochs=2", *TINY])
    assert rc == 2
    assert "training diverged in epoch 1" in caplog.text and "lower learning_rate" in caplog.text
    assert f"nothing was written to {out}" in caplog.text
    assert not out.exists()


def test_a_diverged_epoch_leaves_the_last_good_one(train_file, tmp_path, monkeypatch, caplog):
    original = trainer_module.Trainer.train_epoch

    def train_epoch(self, epoch):
        stats = original(self, epoch)
        if epoch == 2:
            with torch.no_grad():
                self.model.Wy.weight[3, 0] = float("nan")
        return stats

    monkeypatch.setattr(trainer_module.Trainer, "train_epoch", train_epoch)
    out = tmp_path / "m"
    assert main(["train", str(train_file), "--out", str(out), "--set", "n_epochs=3", *TINY]) == 2
    assert "training diverged in epoch 2: the weights Wy.weight became NaN or infinite" in caplog.text
    assert f"{out} keeps the epoch written before" in caplog.text
    meta = json.loads((out / METADATA_FILE).read_text())
    assert [e["epoch"] for e in meta["training"]["epochs"]] == [1]
    load_checkpoint(out)


def test_the_check_passes_a_healthy_network_and_catches_overflow():
    torch.manual_seed(0)
    model = GRU4Rec(50, ModelConfig(layers=(16,)))
    check_not_diverged(model, 1, Path("m"))
    assert model.training  # the probe leaves the mode as it found it
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1e30)
    with pytest.raises(UserError, match=r"training diverged in epoch 4: the network's scores overflow \(largest weight .*e\+29\)"):
        check_not_diverged(model, 4, Path("m"))


def interrupted_run(train_file: Path, out: Path, seed: int, monkeypatch) -> None:
    original = trainer_module.Trainer.train_epoch

    def train_epoch(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return original(self, epoch)

    with monkeypatch.context() as mp:
        mp.setattr(trainer_module.Trainer, "train_epoch", train_epoch)
        assert main(["train", str(train_file), "--out", str(out), "--set", "n_epochs=2", "--seed", str(seed), *TINY]) == 130


def test_resume_with_another_seed_is_refused(train_file, tmp_path, monkeypatch, caplog):
    out = tmp_path / "m"
    interrupted_run(train_file, out, 7, monkeypatch)
    argv = ["train", str(train_file), "--out", str(out), "--set", "n_epochs=2", "--resume", *TINY]
    assert main([*argv, "--seed", "8"]) == 2
    assert f"{out}: was trained with --seed 7; resume with --seed 7" in caplog.text
    assert main(argv) == 2  # the default seed (42) is another seed too
    assert main([*argv, "--seed", "7"]) == 0
    meta = json.loads((out / METADATA_FILE).read_text())
    assert meta["training"]["seed"] == 7 and meta["training"]["complete"] is True
