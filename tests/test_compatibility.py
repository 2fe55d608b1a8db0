"""What a release must keep: the CLI's help text, the HTTP API's schema, and old model directories.

The snapshots in tests/snapshots/ were taken before the code was reorganised by pipeline stage; a
deliberate change to the command line or the API regenerates them (tests/snapshots/update.py).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest

from conftest import FIXTURES

SNAPSHOTS = Path(__file__).resolve().parent / "snapshots"
MODEL_V1 = FIXTURES / "model_v1"
MODEL_V1_TEST = FIXTURES / "model_v1_test.tsv"
# `gru4rec evaluate tests/fixtures/model_v1 tests/fixtures/model_v1_test.tsv`, measured with the
# release that wrote the model
MODEL_V1_METRICS = {
    "recall@1": 0.20408163265306123, "recall@5": 0.47959183673469385, "recall@10": 0.5714285714285714,
    "recall@20": 0.7091836734693877, "mrr@5": 0.2900510204081633, "mrr@10": 0.3023971493359248,
    "mrr@20": 0.3116628946257508,
}


def _help(command: str | None) -> str:
    from gru4rec.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.suppress(SystemExit):
        main(([command] if command else []) + ["--help"])
    return buf.getvalue()


@pytest.mark.parametrize("command", sorted(json.loads((SNAPSHOTS / "cli_help.json").read_text())))
def test_cli_help_is_unchanged(command, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    expected = json.loads((SNAPSHOTS / "cli_help.json").read_text())[command]
    assert _help(None if command == "gru4rec" else command) == expected


def test_openapi_schema_is_unchanged():
    from service.app import create_app
    from service.settings import Settings

    expected = json.loads((SNAPSHOTS / "openapi.json").read_text())
    actual = json.loads(json.dumps(create_app(Settings(model_dir=None)).openapi(), sort_keys=True))
    assert actual == expected


def test_model_v1_loads_and_evaluates():
    from gru4rec.cli import main

    assert main(["evaluate", str(MODEL_V1), str(MODEL_V1_TEST), "-q", "--json", "/dev/null"]) == 0


def test_model_v1_evaluates_to_the_same_metrics(tmp_path):
    from gru4rec.cli import main

    out = tmp_path / "eval.json"
    assert main(["evaluate", str(MODEL_V1), str(MODEL_V1_TEST), "-q", "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    for key, value in MODEL_V1_METRICS.items():
        assert metrics[key] == pytest.approx(value, abs=1e-9), key


def test_model_v1_serves(tmp_path):
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    model_dir = tmp_path / "model"
    shutil.copytree(MODEL_V1, model_dir)
    item = json.loads((MODEL_V1 / "metadata.json").read_text())["item_ids"][0]
    with TestClient(create_app(Settings(model_dir=model_dir, reload_poll_s=0))) as client:
        answer = client.post("/v1/recommend", json={"items": [item], "k": 5})
        assert answer.status_code == 200, answer.text
        assert answer.json()["source"] == "model" and len(answer.json()["items"]) == 5
        info = client.get("/v1/model").json()
        assert info["hyperparameters"]["layers"] == [8] and info["n_items"] == 58


def test_model_v1_warm_starts(tmp_path):
    from gru4rec.cli import main

    out = tmp_path / "warm"
    train = tmp_path / "train.tsv"
    shutil.copy(MODEL_V1_TEST, train)
    code = main([
        "train", str(train), "--init-from", str(MODEL_V1), "--out", str(out), "-q",
        "--set", "layers=[8]", "--set", "n_epochs=1", "--set", "n_sample=16", "--set", "batch_size=8",
    ])
    assert code == 0 and (out / "model.pt").exists()
