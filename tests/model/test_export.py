"""`gru4rec export`: TorchScript and ONNX files of the step-and-score function must reproduce the eager
model step by step (state fed back), for every embedding mode, multi-layer models and any batch size,
and load where this package is not importable."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import onnxruntime as ort
import pytest
import torch

from gru4rec.model.checkpoint import load_checkpoint
from gru4rec.cli import main
from gru4rec.training.params import load_params
from gru4rec.foundation.errors import UserError
from gru4rec.model.export import ExportError, export_model, sidecar_path
from gru4rec.training.run import train

# torch 2.13 flags torch.jit.load as deprecated; loading TorchScript is exactly what is tested here
pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning"),
    pytest.mark.usefixtures("one_torch_thread"),
]

N_ITEMS = 25
COMMON = ["n_sample=8", "n_epochs=1", "batch_size=4", "sample_cache_size=1000"]
MODELS = {
    "shared": ["layers=[16]"],
    "separate": ["layers=[8,6]", "constrained_embedding=false", "embedding=5"],
    "none": ["layers=[8,6]", "constrained_embedding=false", "embedding=0"],
}


@pytest.fixture(scope="module")
def models(tmp_path_factory, one_torch_thread) -> dict[str, str]:
    d = tmp_path_factory.mktemp("export")
    rng = np.random.default_rng(0)
    lines, t = [], 0.0
    for s in range(50):
        start = int(rng.integers(N_ITEMS))
        for k in range(int(rng.integers(3, 7))):
            lines.append(f"s{s}\titem{(start + k) % N_ITEMS}\t{t}\n")
            t += 5.0
    data = d / "train.tsv"
    data.write_text("SessionId\tItemId\tTime\n" + "".join(lines))
    out = {}
    for mode, overrides in MODELS.items():
        params = load_params(None, COMMON + overrides)
        assert params.embedding_mode == mode
        train(data, d / mode, params, device="cpu", seed=3)
        out[mode] = str(d / mode)
    return out


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory) -> dict[tuple[str, str], str]:
    d = tmp_path_factory.mktemp("exported")
    files = {}
    for mode, model_dir in models.items():
        for fmt, suffix in (("torchscript", ".pt"), ("onnx", ".onnx")):
            path = d / f"{mode}{suffix}"
            export_model(model_dir, path, fmt)
            files[mode, fmt] = str(path)
    return files


def runner(path: str, fmt: str):
    if fmt == "torchscript":
        module = torch.jit.load(path)
        return lambda items, hidden: module(items, hidden)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

    def run(items, hidden):
        new_hidden, scores = session.run(None, {"items": items.numpy(), "hidden": hidden.numpy()})
        return torch.from_numpy(new_hidden), torch.from_numpy(scores)

    return run


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("mode", list(MODELS))
@pytest.mark.parametrize("batch_size", [1, 3])
def test_export_matches_eager_step_and_score(models, exported, mode, fmt, batch_size):
    model = load_checkpoint(models[mode]).model
    run = runner(exported[mode, fmt], fmt)
    gen = torch.Generator().manual_seed(batch_size)
    hidden = model.init_hidden(batch_size)
    packed = torch.zeros(batch_size, sum(model.layer_sizes))
    with torch.no_grad():
        for _ in range(4):
            items = torch.randint(0, N_ITEMS, (batch_size,), generator=gen)
            hidden = model.step(items, hidden)
            scores = model.score(hidden)
            packed, got_scores = run(items, packed)  # the export's own state is fed back
            assert packed.shape == (batch_size, sum(model.layer_sizes)) and packed.dtype == torch.float32
            torch.testing.assert_close(packed, torch.cat(hidden, dim=1), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(got_scores, scores, atol=1e-5, rtol=1e-5)


def test_sidecar_maps_indices_to_ids(models, exported):
    ckpt = load_checkpoint(models["none"])
    info = json.loads(sidecar_path(exported["none", "onnx"]).read_text())
    assert info["format"] == "onnx" and info["opset"] >= 17
    assert info["item_ids"] == ckpt.metadata["item_ids"] and info["n_items"] == N_ITEMS
    assert info["layer_sizes"] == [8, 6] and info["hidden_size"] == 14
    assert info["model_version"] == ckpt.version and info["embedding_mode"] == "none"
    assert json.loads(sidecar_path(exported["shared", "torchscript"]).read_text())["layer_sizes"] == [16]


def test_exports_load_without_this_package(exported, tmp_path):
    """What a deployment sees: torch / onnxruntime only, gru4rec not importable."""
    script = textwrap.dedent(
        """
        import sys
        sys.modules["gru4rec"] = None  # any import of it now fails
        import numpy as np, onnxruntime, torch
        pt, onnx_path = sys.argv[1:3]
        items = torch.tensor([0, 4, 2, 1, 3]); hidden = torch.zeros(5, 14)
        h1, s1 = torch.jit.load(pt)(items, hidden)
        h2, s2 = onnxruntime.InferenceSession(onnx_path).run(None, {"items": items.numpy(), "hidden": hidden.numpy()})
        assert np.allclose(h1.numpy(), h2, atol=1e-5) and np.allclose(s1.numpy(), s2, atol=1e-5)
        print(tuple(s1.shape))
        """
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", script, exported["separate", "torchscript"], exported["separate", "onnx"]],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"(5, {N_ITEMS})"


def test_cli_export(models, tmp_path, capsys):
    out = tmp_path / "sub" / "model.pt"
    assert main(["export", models["shared"], "--format", "torchscript", "--out", str(out), "-q"]) == 0
    assert out.exists() and sidecar_path(out).exists()
    assert "exported torchscript" in capsys.readouterr().out
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []  # no temporary files left


def test_missing_model_dir_exits_2(tmp_path, caplog):
    missing = tmp_path / "nope"
    assert main(["export", str(missing), "--format", "torchscript", "--out", str(tmp_path / "m.pt")]) == 2
    assert "model directory not found" in caplog.text and str(missing) in caplog.text
    assert not (tmp_path / "m.pt").exists()


def test_unknown_format_exits_2(models, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["export", models["shared"], "--format", "tflite", "--out", str(tmp_path / "m")])
    assert exc.value.code == 2
    assert "--format" in capsys.readouterr().err
    with pytest.raises(UserError, match="tflite"):
        export_model(models["shared"], tmp_path / "m", "tflite")


def test_out_is_a_directory_exits_2(models, tmp_path, caplog):
    assert main(["export", models["shared"], "--format", "torchscript", "--out", str(tmp_path)]) == 2
    assert "is a directory" in caplog.text


def test_onnx_without_the_extra_names_the_install_command(models, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    assert main(["export", models["shared"], "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "onnxruntime" in caplog.text and "gru4rec-service[export]" in caplog.text
    assert not (tmp_path / "m.onnx").exists()


def test_a_failed_verification_keeps_the_previous_export(models, tmp_path, monkeypatch):
    out = tmp_path / "model.pt"
    out.write_bytes(b"previous export")
    monkeypatch.setattr("gru4rec.model.export.VERIFY_ATOL", -1.0)  # every export now "differs"
    with pytest.raises(ExportError, match="differs from the eager model"):
        export_model(models["shared"], out, "torchscript")
    assert out.read_bytes() == b"previous export" and not sidecar_path(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # no temporary files left


def test_a_failed_verification_is_a_one_line_error_with_exit_code_2(models, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr("gru4rec.model.export.VERIFY_ATOL", -1.0)
    code = main(["export", str(models["shared"]), "--format", "torchscript", "--out", str(tmp_path / "m.pt"), "-q"])
    assert code == 2
    assert "differs from the eager model" in caplog.text and "Traceback" not in caplog.text
