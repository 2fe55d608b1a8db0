"""A model directory damaged by hand or by a diverged run is refused with one line naming the file
and the field or tensor (exit 2 on the command line), and never with PyTorch's advice to load unsafely."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from gru4rec.cli import main
from gru4rec.data.sessions import ItemMap
from gru4rec.foundation.errors import ModelUnavailable
from gru4rec.model.checkpoint import (
    METADATA_FILE,
    MODEL_FILE,
    OPTIMIZER_FILE,
    RESUME_FILE,
    load_checkpoint,
    load_optimizer_state,
    load_resume_state,
    save_checkpoint,
)
from gru4rec.model.config import ModelConfig
from gru4rec.model.network import GRU4Rec

IDS = ["a", "b", "007", "7", "x y"]


@pytest.fixture
def model_dir(tmp_path) -> Path:
    torch.manual_seed(0)
    model = GRU4Rec(len(IDS), ModelConfig(layers=(4,)))
    training = {"settings": {"loss": "cross-entropy", "learning_rate": 0.05}, "seed": 1, "epochs": [], "complete": True}
    save_checkpoint(tmp_path / "m", model, ItemMap.from_ids(IDS), np.arange(1, 6), training,
                    resume_state={"epoch": 1, "weights": model.state_dict()}, optimizer_state=[{"state": {}}])
    return tmp_path / "m"


def edit(model_dir: Path, change) -> None:
    path = model_dir / METADATA_FILE
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def set_path(meta: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        meta = meta[key]
    meta[last] = value


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("item_ids", ["a", "b", "007", "b", "x y"], "item_ids lists the item id 'b' more than once"),
        ("item_ids", ["a", "b", 7, "7", "x y"], "item_ids must be a list of at least two item id strings"),
        ("item_ids", None, "item_ids must be a list"),
        ("item_counts", [1, 2, 3], "item_counts has 3 entries for 5 item_ids"),
        ("item_counts", [1, 2, "3", 4, 5], "item_counts must be a list of non-negative integers"),
        ("item_counts", [1, 2, 3.5, 4, 5], "item_counts must be a list of non-negative integers"),
        ("item_counts", None, "item_counts must be a list of non-negative integers"),
        ("n_items", 6, "n_items is 6 but item_ids lists 5 items"),
        ("model", None, "model must be a table of settings, not null"),
        ("model.layers", None, "model.layers is null"),
        ("model.layers", [4.5], "model.layers is [4.5], expected a list of layer sizes"),
        ("model.constrained_embedding", "yes", 'model.constrained_embedding is "yes", expected true or false'),
        ("model.dropout_p_hidden", 1.5, "model: parameter dropout_p_hidden=1.5 is invalid"),
        ("training", None, "training must be a table"),
        ("training.settings", None, "training.settings must be a table of settings, not null"),
        ("training.settings.learning_rate", None, "training.settings.learning_rate is null"),
    ],
)
def test_damaged_metadata_names_the_file_and_field(model_dir, field, value, message):
    edit(model_dir, lambda meta: set_path(meta, field, value))
    with pytest.raises(ModelUnavailable, match=re.escape(f"{model_dir / METADATA_FILE}: {message}")):
        load_checkpoint(model_dir)


def test_format_1_hyperparameters_null(model_dir):
    def to_format_1(meta):
        meta["format_version"] = 1
        meta["hyperparameters"] = None
        del meta["model"]

    edit(model_dir, to_format_1)
    with pytest.raises(ModelUnavailable, match="hyperparameters must be a table of settings, not null"):
        load_checkpoint(model_dir)


def test_damaged_metadata_on_the_command_line(model_dir, tmp_path, caplog):
    edit(model_dir, lambda meta: set_path(meta, "item_ids", ["a", "a", "b", "c", "d"]))
    test = tmp_path / "test.tsv"
    test.write_text("SessionId\tItemId\tTime\n1\ta\t1\n1\tb\t2\n")
    assert main(["evaluate", str(model_dir), str(test), "-q"]) == 2
    assert f"{model_dir / METADATA_FILE}: item_ids lists the item id 'a' more than once" in caplog.text


class Payload:
    """Any pickled object: torch.load(weights_only=True) refuses it, as it must."""


@pytest.mark.parametrize("file", [MODEL_FILE, OPTIMIZER_FILE, RESUME_FILE])
def test_pickles_are_refused_without_advice_to_load_unsafely(model_dir, file):
    torch.save({"weights": {"x": Payload()}, "Wy.weight": Payload()}, model_dir / file)
    load = {MODEL_FILE: load_checkpoint, OPTIMIZER_FILE: load_optimizer_state, RESUME_FILE: load_resume_state}[file]
    with pytest.raises(ModelUnavailable) as info:
        load(model_dir)
    message = str(info.value)
    assert message.startswith(f"{model_dir / file}: cannot load") and "never loads" in message
    assert "weights_only" not in message and "\n" not in message


@pytest.mark.parametrize("content", [b"hello world" * 10, b"", "half"])
def test_damaged_weights_are_one_line(model_dir, content):
    data = (model_dir / MODEL_FILE).read_bytes()
    (model_dir / MODEL_FILE).write_bytes(data[: len(data) // 2] if content == "half" else content)
    with pytest.raises(ModelUnavailable, match=re.escape(f"{model_dir / MODEL_FILE}: cannot load weights")) as info:
        load_checkpoint(model_dir)
    assert "weights_only" not in str(info.value) and "\n" not in str(info.value)


def test_weights_for_another_item_count(model_dir):
    edit(model_dir, lambda meta: meta.update(item_ids=IDS + ["new"], item_counts=list(range(1, 7)), n_items=6))
    with pytest.raises(ModelUnavailable, match=r"model.pt: tensor Wy.weight has shape \[5, 4\], but metadata.json \(6 items"):
        load_checkpoint(model_dir)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(model_dir, bad):
    state = torch.load(model_dir / MODEL_FILE, weights_only=True)
    state["cells.0.weight_hh"][1, 2] = bad
    torch.save(state, model_dir / MODEL_FILE)
    with pytest.raises(ModelUnavailable, match=re.escape(f"{model_dir / MODEL_FILE}: tensor cells.0.weight_hh holds non-finite values")):
        load_checkpoint(model_dir)
    resume = torch.load(model_dir / RESUME_FILE, weights_only=True)
    resume["weights"]["By.weight"][0] = bad
    torch.save(resume, model_dir / RESUME_FILE)
    with pytest.raises(ModelUnavailable, match=re.escape(f"{model_dir / RESUME_FILE}: tensor By.weight holds non-finite")):
        load_resume_state(model_dir)


def test_non_finite_weights_stop_evaluate_and_warm_start(model_dir, tmp_path, caplog):
    state = torch.load(model_dir / MODEL_FILE, weights_only=True)
    state["Wy.weight"][:] = float("nan")
    torch.save(state, model_dir / MODEL_FILE)
    data = tmp_path / "d.tsv"
    data.write_text("SessionId\tItemId\tTime\n" + "".join(f"{s}\t{i}\t{s * 10 + k}\n" for s in range(20) for k, i in enumerate(IDS[:3])))
    assert main(["evaluate", str(model_dir), str(data), "-q"]) == 2
    assert main(["train", str(data), "--init-from", str(model_dir), "--set", "layers=[4]", "--out", str(tmp_path / "w"), "-q"]) == 2
    assert caplog.text.count("tensor Wy.weight holds non-finite values") == 2
    assert not (tmp_path / "w").exists()
