"""`gru4rec export`: write a model's step-and-score function as TorchScript or ONNX for other runtimes."""

from __future__ import annotations

import argparse


def register(subparsers, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "export",
        parents=[common],
        help="export a model to TorchScript or ONNX",
        description=(
            "Export the model in MODEL_DIR to FILE as one session step: inputs items (int64 [B], item "
            "indices) and hidden (float32 [B, sum of layer sizes], all GRU layers' states concatenated; "
            "zeros for a new session), outputs (new_hidden, scores float32 [B, n_items]). The batch size "
            "is dynamic and the model runs in eval mode. FILE.json beside it lists the item ids in index "
            "order, the layer sizes and the model version. The export is checked against the model "
            "before it is reported done. ONNX needs `pip install 'gru4rec-service[export]'`."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", help="model directory written by `gru4rec train`")
    p.add_argument(
        "--format", dest="fmt", required=True, choices=["torchscript", "onnx"],
        help="torchscript (torch.jit.load, libtorch) or onnx (onnxruntime, opset 18)",
    )
    p.add_argument("--out", required=True, metavar="FILE", help="file to write, e.g. model.pt or model.onnx")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gru4rec.foundation.atomic import check_output_file
    from gru4rec.model.export import export_model, sidecar_path

    check_output_file(args.out)
    check_output_file(sidecar_path(args.out), "--out (its sidecar)")
    info = export_model(args.model_dir, args.out, args.fmt)
    print(f"exported {info['format']} ({info['n_items']} items, hidden size {info['hidden_size']}) -> {args.out} + {sidecar_path(args.out)}")
    return 0
