#!/usr/bin/env bash
# GPU check of the training step (issue 15), for a machine with one CUDA GPU. Needs nothing but this
# repository and a Python with its dependencies (torch with CUDA, numpy, pandas, pyarrow, pytest):
# it generates its own data. Takes about 4-6 minutes on one GPU (the eager step dominates).
#
#   benchmarks/gpu_check.sh            # PYTHON=... to choose the interpreter
#
# 1. the CUDA tests (tests/training/test_cuda.py: the CUDA-graph step against the eager step, its
#    self-check and fallback), 2. events/s and mini-batches/s of the eager and the fast step at batch
#    32, 64 and 256 with rsc15-xe on a 37,000-item synthetic log, 3. Recall@20 / MRR@20 of both.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export GRU4REC_CACHE_DIR=${GRU4REC_CACHE_DIR:-$(mktemp -d)}

"$PYTHON" - <<'EOF'
import importlib, sys
missing = [m for m in ("torch", "numpy", "pandas", "pyarrow", "pytest") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu_check: missing Python packages: {', '.join(missing)}")
try:  # what the check imports, so that a missing dependency shows here in one line, not mid-run
    import data_prep.synth, gru4rec.evaluation.protocol, gru4rec.training.trainer  # noqa: F401
except ImportError as exc:
    sys.exit(f"gpu_check: cannot import the project ({exc}); install its dependencies (pyproject.toml)")
import torch
print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}, "
      f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}")
if not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA device")
EOF

echo "== CUDA tests"
"$PYTHON" -m pytest -q -p no:cacheprovider tests/training/test_cuda.py

echo "== throughput and accuracy"
"$PYTHON" benchmarks/gpu_check.py "$@"
