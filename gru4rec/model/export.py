"""Export a trained model's step-and-score function to TorchScript or ONNX, for runtimes without Python
GRU4Rec code (C++/Java via libtorch, onnxruntime in any language, Triton, ...).

The exported function is one click of a session batch:

    (items int64 [B], hidden float32 [B, H]) -> (new_hidden float32 [B, H], scores float32 [B, n_items])

H is the sum of the GRU layer sizes: every layer's state concatenated, so one tensor carries a whole
session's state between calls (a fresh session starts from zeros). `items` are item *indices*; the
sidecar FILE.json lists the item ids in index order (and the layer sizes) so a runtime can map ids
both ways. The batch dimension is dynamic. The model runs in eval mode: no dropout.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import gru4rec
from gru4rec.foundation.atomic import atomic_file, scratch_dir
from gru4rec.model.checkpoint import Checkpoint, load_checkpoint
from gru4rec.foundation.errors import GRU4RecError, UserError
from gru4rec.model.network import GRU4Rec

log = logging.getLogger("gru4rec.model.export")

FORMATS = ("torchscript", "onnx")
ONNX_OPSET = 18
INPUT_NAMES = ("items", "hidden")
OUTPUT_NAMES = ("new_hidden", "scores")
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
EXPORTER_LOG_LEVELS = {
    "torch.onnx": logging.WARNING, "torch.export": logging.WARNING, "torch._dynamo": logging.WARNING,
    "onnxscript": logging.WARNING, "onnx_ir": logging.WARNING,
    "torch.onnx._internal.exporter._registration": logging.ERROR,  # "torchvision is not installed"
}
VERIFY_ATOL = 1e-4  # float32 kernels differ between eager, TorchScript and onnxruntime by ~1e-6


class ExportError(GRU4RecError):
    """The exporter failed, or its file does not compute what the model computes: nothing is replaced.

    Exit code 2, like any unusable result (see gru4rec.foundation.errors)."""


class StepAndScore(nn.Module):
    """One GRU step then scores for every item, with the per-layer states packed into one tensor."""

    def __init__(self, model: GRU4Rec) -> None:
        super().__init__()
        self.model = model
        self.layer_sizes = [int(s) for s in model.layer_sizes]

    def forward(self, items: Tensor, hidden: Tensor) -> tuple[Tensor, Tensor]:
        new = self.model.step_packed(items, hidden)
        return new, self.model.score(new[:, -self.layer_sizes[-1] :])


def sidecar_path(out: str | os.PathLike[str]) -> Path:
    """FILE.json beside FILE (the suffix is appended, so model.onnx -> model.onnx.json)."""
    out = Path(out)
    return out.with_name(out.name + ".json")


def export_model(model_dir: str | os.PathLike[str], out: str | os.PathLike[str], fmt: str) -> dict[str, Any]:
    """Export MODEL_DIR to `out` in `fmt`, verify it against the eager model and write the sidecar.

    Returns the sidecar's content. Both files are written atomically, the model only once it has
    passed verification (so a failed export never replaces a good one), the sidecar last.
    """
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r} is not supported: expected one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.is_dir():
        raise UserError(f"--out {out}: is a directory; give a file name such as {out / ('model' + _suffix(fmt))}")
    if fmt == "onnx":
        _require_onnx()  # before loading the model: fail fast on a missing extra
    ckpt = load_checkpoint(model_dir, device="cpu")
    wrapper = StepAndScore(ckpt.model).eval().requires_grad_(False)  # outputs are plain inference tensors
    example = _example_inputs(ckpt.model, batch_size=2)
    with _atomic_files(out) as tmp, torch.no_grad():
        if fmt == "torchscript":
            _export_torchscript(wrapper, example, tmp)
        else:
            _export_onnx(wrapper, example, tmp)
        max_diff = verify_export(tmp, fmt, wrapper)
    log.info("verified %s against the eager model: max abs difference %.2e", out, max_diff)
    sidecar = sidecar_content(ckpt, fmt)
    with atomic_file(sidecar_path(out)) as fh:
        json.dump(sidecar, fh, indent=1)
    log.info("exported %s (%s, %d items, layers %s) and %s", out, fmt, sidecar["n_items"], sidecar["layer_sizes"], sidecar_path(out))
    return sidecar


def sidecar_content(ckpt: Checkpoint, fmt: str) -> dict[str, Any]:
    """What a runtime needs beside the graph: the index -> item id map and the state layout."""
    sizes = [int(s) for s in ckpt.model.layer_sizes]
    return {
        "format": fmt,
        "opset": ONNX_OPSET if fmt == "onnx" else None,
        "model_version": ckpt.version,
        "gru4rec_version": gru4rec.__version__,
        "torch_version": torch.__version__,
        "inputs": {"items": "int64 [batch] item indices", "hidden": f"float32 [batch, {sum(sizes)}]"},
        "outputs": {"new_hidden": f"float32 [batch, {sum(sizes)}]", "scores": f"float32 [batch, {ckpt.model.n_items}]"},
        "layer_sizes": sizes,
        "hidden_size": sum(sizes),
        "embedding_mode": ckpt.model.mode,
        "n_items": ckpt.model.n_items,
        "item_ids": [str(i) for i in ckpt.metadata["item_ids"]],
    }


def _suffix(fmt: str) -> str:
    return ".onnx" if fmt == "onnx" else ".pt"


def _example_inputs(model: GRU4Rec, batch_size: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Random items and a non-zero state, so tracing and verification exercise every weight."""
    gen = torch.Generator().manual_seed(seed)
    items = torch.randint(0, model.n_items, (batch_size,), generator=gen, dtype=torch.int64)
    hidden = torch.rand(batch_size, sum(model.layer_sizes), generator=gen) * 0.2 - 0.1
    return items, hidden


def _require_onnx() -> None:
    """The ONNX exporter needs onnx + onnxscript, verification onnxruntime: all in the `export` extra."""
    missing = []
    for name in ONNX_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UserError(
            f"--format onnx needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed: "
            "pip install 'gru4rec-service[export]'"
        )


def _export_torchscript(wrapper: StepAndScore, example: tuple[Tensor, Tensor], out: Path) -> None:
    """Trace (not script): step() is plain tensor code whose only branches depend on the mode, fixed
    per model, so the trace is exact and loads with torch.jit.load without this package."""
    with warnings.catch_warnings():
        # torch 2.13 marks TorchScript deprecated in favour of torch.export, but libtorch runtimes still
        # load only TorchScript; the warning would only confuse someone who asked for this format
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        traced = torch.jit.trace(wrapper, example, check_trace=False)
        torch.jit.save(traced, str(out))


def _export_onnx(wrapper: StepAndScore, example: tuple[Tensor, Tensor], out: Path) -> None:
    """torch.export-based exporter (onnxscript), batch dimension dynamic."""
    batch = torch.export.Dim("batch", min=1)
    chatter = io.StringIO()  # the exporter prints progress lines to stdout; they go to the debug log
    try:
        with contextlib.redirect_stdout(chatter), _quiet_loggers(EXPORTER_LOG_LEVELS), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                wrapper, example, None,
                input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                opset_version=ONNX_OPSET, dynamo=True, verbose=False,
                dynamic_shapes={"items": {0: batch}, "hidden": {0: batch}},
            )
    except Exception as exc:  # the exporter raises its own error types; keep the first line
        raise ExportError(f"ONNX export failed: {str(exc).strip().splitlines()[0]}") from exc
    finally:
        if chatter.getvalue():
            log.debug("torch.onnx: %s", chatter.getvalue().strip())
    program.save(out)


@contextlib.contextmanager
def _quiet_loggers(levels: dict[str, int]) -> Iterator[None]:
    """Exporter internals log every pass even at -v, and warn about torchvision ops this model never
    uses; only their real warnings are news to a user."""
    loggers = [logging.getLogger(name) for name in levels]
    saved = [lg.level for lg in loggers]
    for lg, level in zip(loggers, levels.values()):
        lg.setLevel(level)
    try:
        yield
    finally:
        for lg, level in zip(loggers, saved):
            lg.setLevel(level)


@contextlib.contextmanager
def _atomic_files(out: Path) -> Iterator[Path]:
    """A path with `out`'s name in a temporary directory beside it; whatever gets written there
    (the model and, above 2 GB, its external-data file, referenced by name) replaces its namesake
    beside `out` only if the block succeeds."""
    with scratch_dir(out) as tmp_dir:  # locked while in use; a killed export's is removed next time
        yield tmp_dir / out.name
        for produced in sorted(tmp_dir.iterdir(), key=lambda p: p.name == out.name):  # the model last
            os.replace(produced, out.parent / produced.name)


def verify_export(out: Path, fmt: str, wrapper: StepAndScore, steps: int = 2) -> float:
    """Run the written file (as a runtime would load it) next to the eager model for a few steps.

    A mismatch means the export is wrong, so it is an error, not a warning.
    """
    run = _load_runtime(out, fmt)
    items, hidden = _example_inputs(wrapper.model, batch_size=3, seed=1)
    expected_hidden = hidden
    worst = 0.0
    with torch.no_grad():
        for k in range(steps):
            step_items = (items + k) % wrapper.model.n_items
            want_hidden, want_scores = wrapper(step_items, expected_hidden)
            got_hidden, got_scores = run(step_items, hidden)
            worst = max(worst, float((got_hidden - want_hidden).abs().max()), float((got_scores - want_scores).abs().max()))
            hidden, expected_hidden = got_hidden, want_hidden
    if worst > VERIFY_ATOL:
        raise ExportError(f"{out}: exported {fmt} model differs from the eager model by {worst:.3g}")
    return worst


def _load_runtime(out: Path, fmt: str) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """A callable (items, hidden) -> (new_hidden, scores) backed by the exported file."""
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=DeprecationWarning)
            module = torch.jit.load(str(out), map_location="cpu")
        return lambda items, hidden: module(items, hidden)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])

    def run(items: Tensor, hidden: Tensor) -> tuple[Tensor, Tensor]:
        new_hidden, scores = session.run(list(OUTPUT_NAMES), {"items": items.numpy(), "hidden": hidden.numpy()})
        return torch.from_numpy(new_hidden), torch.from_numpy(scores)

    return run
