"""Model directories: tensors only (torch.load(weights_only=True) in a fresh process gives the same
scores), complete metadata, a clear error for another format version, atomic writes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from gru4rec.model.checkpoint import (
    FORMAT_VERSION,
    METADATA_FILE,
    MODEL_FILE,
    RESUME_FILE,
    load_checkpoint,
    load_resume_state,
    read_metadata,
    save_checkpoint,
)
from gru4rec.training.params import HyperParams
from gru4rec.data.sessions import ItemMap
from gru4rec.foundation.errors import UserError
from gru4rec.model.network import GRU4Rec

IDS = ["214536502", "214536500", "apple", "x y", "7", "ü-item"]
PROBE = [[0, 5, 2], [3, 3, 1]]


def build(params: HyperParams | None = None) -> tuple[GRU4Rec, ItemMap, np.ndarray]:
    torch.manual_seed(0)
    params = params or HyperParams(layers=(6, 4), constrained_embedding=False, embedding=5, dropout_p_hidden=0.3)
    model = GRU4Rec(len(IDS), params.model)
    with torch.no_grad():
        model.By.weight.normal_()
    return model.eval(), ItemMap.from_ids(IDS), np.arange(1, len(IDS) + 1, dtype=np.int64)


def probe_scores(model: GRU4Rec) -> torch.Tensor:
    with torch.no_grad():
        h = model.init_hidden(len(PROBE[0]))
        for clicks in PROBE:
            h = model.step(torch.tensor(clicks), h)
        return model.score(h)


TRAINING = {"train_file": "t.tsv", "epochs": [{"epoch": 1, "loss": 1.5}], "complete": True}


def test_metadata_contents(tmp_path):
    model, item_map, counts = build()
    save_checkpoint(tmp_path / "m", model, item_map, counts, TRAINING)
    meta = json.loads((tmp_path / "m" / METADATA_FILE).read_text())
    for key in ("format_version", "model", "item_ids", "item_counts", "libraries", "training"):
        assert key in meta, key
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["model"] == {"architecture": "gru4rec", **model.config.to_dict()}
    assert meta["item_ids"] == IDS
    assert meta["item_counts"] == counts.tolist()
    assert meta["training"] == TRAINING
    assert {"torch", "numpy", "python", "gru4rec"} <= set(meta["libraries"])
    assert not (tmp_path / "m" / RESUME_FILE).exists()
    assert read_metadata(tmp_path / "m") == meta


@pytest.mark.parametrize("mode", [dict(constrained_embedding=True), dict(constrained_embedding=False, embedding=0)])
def test_round_trip_in_process(tmp_path, mode):
    model, item_map, counts = build(HyperParams(layers=(7,), **mode))
    save_checkpoint(tmp_path / "m", model, item_map, counts, TRAINING)
    ck = load_checkpoint(tmp_path / "m")
    assert not ck.model.training
    assert ck.config == model.config
    assert ck.item_map.ids.tolist() == IDS
    assert ck.item_counts.tolist() == counts.tolist()
    assert torch.equal(probe_scores(ck.model), probe_scores(model))


def test_weights_only_load_in_fresh_process(tmp_path):
    model, item_map, counts = build()
    save_checkpoint(tmp_path / "m", model, item_map, counts, TRAINING)
    expected = probe_scores(model)
    out = tmp_path / "scores.pt"
    code = textwrap.dedent(
        f"""
        import json, sys, torch
        from pathlib import Path
        d = Path(sys.argv[1])
        state = torch.load(d / {MODEL_FILE!r}, weights_only=True)  # plain tensors, no pickled objects
        assert all(isinstance(v, torch.Tensor) for v in state.values()), state.keys()
        from gru4rec.model.config import ModelConfig
        from gru4rec.model.network import GRU4Rec
        meta = json.loads((d / {METADATA_FILE!r}).read_text())
        model = GRU4Rec(len(meta["item_ids"]), ModelConfig(**{{k: v for k, v in meta["model"].items() if k != "architecture"}}))
        model.load_state_dict(state)
        model.eval()
        with torch.no_grad():
            h = model.init_hidden({len(PROBE[0])})
            for clicks in {PROBE!r}:
                h = model.step(torch.tensor(clicks), h)
            torch.save(model.score(h), sys.argv[2])
        """
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m"), str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert torch.equal(torch.load(out, weights_only=True), expected)


def test_other_format_version_is_user_error(tmp_path):
    model, item_map, counts = build()
    save_checkpoint(tmp_path / "m", model, item_map, counts, TRAINING)
    meta_path = tmp_path / "m" / METADATA_FILE
    meta = json.loads(meta_path.read_text())
    for version in (FORMAT_VERSION + 1, 0, "1", None):
        meta["format_version"] = version
        meta_path.write_text(json.dumps(meta))
        with pytest.raises(UserError, match="format version"):
            load_checkpoint(tmp_path / "m")
    del meta["format_version"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(UserError, match="format version"):
        load_checkpoint(tmp_path / "m")


def test_not_a_model_directory(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a model directory"):
        load_checkpoint(tmp_path / "empty")
    model, item_map, counts = build()
    save_checkpoint(tmp_path / "m", model, item_map, counts, TRAINING)
    (tmp_path / "m" / METADATA_FILE).write_text("{broken")
    with pytest.raises(UserError, match="metadata"):
        load_checkpoint(tmp_path / "m")


def test_corrupt_weights_is_user_error(tmp_path):
    model, item_map, counts = build()
    save_checkpoint(tmp_path / "m", model, item_map, counts, TRAINING, resume_state={"epoch": 1})
    weights = (tmp_path / "m" / MODEL_FILE).read_bytes()
    for broken in (b"not a torch file", weights[: len(weights) // 2], b""):
        (tmp_path / "m" / MODEL_FILE).write_bytes(broken)
        with pytest.raises(UserError, match=MODEL_FILE):
            load_checkpoint(tmp_path / "m")
    (tmp_path / "m" / RESUME_FILE).write_bytes(b"garbage")
    with pytest.raises(UserError, match=RESUME_FILE):
        load_resume_state(tmp_path / "m")


def test_weights_of_another_shape_is_user_error(tmp_path):
    model, item_map, counts = build()
    save_checkpoint(tmp_path / "m", model, item_map, counts, TRAINING)
    meta_path = tmp_path / "m" / METADATA_FILE
    meta = json.loads(meta_path.read_text())
    meta["model"]["layers"] = [9, 4]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(UserError, match=MODEL_FILE):
        load_checkpoint(tmp_path / "m")


@pytest.mark.parametrize("key", ["model", "item_ids", "item_counts"])
def test_metadata_missing_a_field_is_user_error(tmp_path, key):
    model, item_map, counts = build()
    save_checkpoint(tmp_path / "m", model, item_map, counts, TRAINING)
    meta_path = tmp_path / "m" / METADATA_FILE
    meta = json.loads(meta_path.read_text())
    del meta[key]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(UserError, match=key):
        load_checkpoint(tmp_path / "m")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    model, item_map, counts = build()
    bad_training = {"not_json": object()}  # fails after the weights were written to the temporary dir
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "m", model, item_map, counts, bad_training)
    assert list(tmp_path.iterdir()) == []  # no partial directory, no temporary left behind


def test_atomic_write_keeps_previous_directory_on_failure(tmp_path):
    model, item_map, counts = build()
    save_checkpoint(tmp_path / "m", model, item_map, counts, TRAINING)
    before = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()}
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "m", model, item_map, counts, {"bad": object()})
    assert {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["m"]
    # and a successful rewrite replaces it whole (the resume file of an earlier save disappears)
    save_checkpoint(tmp_path / "m", model, item_map, counts, TRAINING, resume_state={"epoch": 1})
    assert (tmp_path / "m" / RESUME_FILE).exists()
    save_checkpoint(tmp_path / "m", model, item_map, counts, TRAINING)
    assert not (tmp_path / "m" / RESUME_FILE).exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_state_dict_override_and_resume_state(tmp_path):
    model, item_map, counts = build()
    other = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    resume = {"epoch": 3, "weights": model.state_dict(), "rng": torch.get_rng_state(), "best_value": 0.5}
    save_checkpoint(tmp_path / "m", model, item_map, counts, TRAINING, state_dict=other, resume_state=resume)
    ck = load_checkpoint(tmp_path / "m")
    assert all(float(v.abs().sum()) == 0.0 for v in ck.model.state_dict().values())
    state = load_resume_state(tmp_path / "m")  # loads with weights_only=True
    assert state["epoch"] == 3 and state["best_value"] == 0.5
    assert torch.equal(state["weights"]["Wy.weight"], model.state_dict()["Wy.weight"])
    assert load_resume_state(tmp_path / "nothing") is None
