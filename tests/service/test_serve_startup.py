"""`gru4rec serve` with a model that cannot be served (issue 12, defects 4 and 5): a damaged or
pickle-carrying model.pt, item counts that do not match the items, duplicate item ids, NaN weights or
weights so large the scores overflow. Each is one error line and exit code 2 before any server starts
(never uvicorn's traceback and exit 3), and is refused by a reload, which keeps the old model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from service_helpers import client, copy_model, model_a, swap_model

from gru4rec.cli import main

MARKER = Path("/tmp") / "gru4rec-test-pickle-ran"


class _Payload:
    """Pickled into a model.pt: loading it unsafely would create MARKER."""

    def __reduce__(self):
        return (Path.touch, (MARKER,))


def _edit_weights(directory: Path, change) -> None:
    state = torch.load(directory / "model.pt", weights_only=True)
    change(state)
    torch.save(state, directory / "model.pt")


def _edit_metadata(directory: Path, change) -> None:
    meta = json.loads((directory / "metadata.json").read_text())
    change(meta)
    (directory / "metadata.json").write_text(json.dumps(meta))


def _nan(state):
    state["Wy.weight"][3, 2] = float("nan")


def _huge(state):
    for tensor in state.values():
        tensor.mul_(1e30)


def _damage(directory: Path, kind: str) -> None:
    if kind == "truncated model.pt":
        data = (directory / "model.pt").read_bytes()
        (directory / "model.pt").write_bytes(data[: len(data) // 2])
    elif kind == "pickle in model.pt":
        _edit_weights(directory, lambda state: state.__setitem__("payload", _Payload()))
    elif kind == "item counts of the wrong length":
        _edit_metadata(directory, lambda meta: meta.__setitem__("item_counts", meta["item_counts"][:-5]))
    elif kind == "item counts of the wrong type":
        _edit_metadata(directory, lambda meta: meta.__setitem__("item_counts", ["many"] * len(meta["item_counts"])))
    elif kind == "duplicate item ids":
        _edit_metadata(directory, lambda meta: meta["item_ids"].__setitem__(7, meta["item_ids"][3]))
    elif kind == "NaN weights":
        _edit_weights(directory, _nan)
    elif kind == "weights that overflow":
        _edit_weights(directory, _huge)


KINDS = ["truncated model.pt", "pickle in model.pt", "item counts of the wrong length", "item counts of the wrong type",
         "duplicate item ids", "NaN weights", "weights that overflow"]


@pytest.fixture
def no_server(monkeypatch):
    started = []
    monkeypatch.setattr("uvicorn.run", lambda *a, **k: started.append(a) or pytest.fail("the server was started"))
    for name in ("GRU4REC_MODEL_DIR", "PROMETHEUS_MULTIPROC_DIR", "GRU4REC_REDIS_URL"):
        monkeypatch.setenv(name, "-")  # `serve` exports its options; restore the environment afterwards
        monkeypatch.delenv(name)
    return started


@pytest.mark.parametrize("kind", KINDS)
def test_serve_refuses_a_model_it_cannot_serve_in_one_line(tmp_path, kind, no_server, capsys):
    MARKER.unlink(missing_ok=True)
    bad = copy_model(model_a(), tmp_path / "bad")
    _damage(bad, kind)
    assert main(["serve", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if "ERROR" in line or "error" in line.lower()]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert str(bad) in errors[0]
    assert not no_server and not MARKER.exists()


def test_serve_starts_with_a_good_model_and_hands_it_over(tmp_path, monkeypatch, no_server):
    good = copy_model(model_a(), tmp_path / "good")
    served = []
    monkeypatch.setattr("uvicorn.run", lambda app, **options: served.append((app, options)))
    assert main(["serve", str(good), "--port", "8123"]) == 0
    app, options = served[0]
    assert options["port"] == 8123 and app.state.preloaded.n_items == 60  # checked once, then served as loaded


@pytest.mark.parametrize("kind", ["NaN weights", "truncated model.pt", "item counts of the wrong length"])
def test_reload_refuses_such_a_model_and_keeps_serving(tmp_path, kind):
    served = copy_model(model_a(), tmp_path / "served")
    bad = copy_model(model_a(), tmp_path / "bad")
    _damage(bad, kind)
    _edit_metadata(bad, lambda meta: meta.__setitem__("model_version", "damaged-version"))
    with client(served, api_key="k") as api:
        before = api.get("/v1/model").json()["model_version"]
        swap_model(bad, served)
        r = api.post("/v1/admin/reload", headers={"X-API-Key": "k"})
        assert r.status_code == 409 and "still serving" in r.json()["detail"]
        ready = api.get("/readyz")
        assert ready.status_code == 200 and ready.json()["model_version"] == before
        assert api.post("/v1/recommend", json={"items": ["1001"], "k": 5}).json()["model_version"] == before


def test_an_app_never_reports_ready_with_nan_weights(tmp_path):
    bad = copy_model(model_a(), tmp_path / "bad")
    _damage(bad, "NaN weights")
    from gru4rec.foundation.errors import ModelUnavailable

    with pytest.raises(ModelUnavailable, match="NaN"):
        with client(bad):
            pass


def test_serve_refuses_a_sasrec_model_in_one_line(tmp_path, no_server, capsys):
    """Serving runs GRU4Rec networks only: a SASRec model directory is one clear error, exit 2."""
    import numpy as np

    from gru4rec.data.sessions import ItemMap
    from gru4rec.model.checkpoint import save_checkpoint
    from gru4rec.model.sasrec import SASRec, SASRecConfig

    model = SASRec(11, SASRecConfig(hidden_size=16, n_blocks=1, n_heads=2, ff_size=24, max_len=8)).eval()
    save_checkpoint(tmp_path / "m", model, ItemMap.from_ids(range(11)), np.ones(11), {})
    assert main(["serve", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "'sasrec' model" in err and str(tmp_path / "m") in err
