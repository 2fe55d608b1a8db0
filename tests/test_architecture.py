"""The import contract in pyproject.toml ([tool.importlinter]): imports run one way through the house."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import REPO


def test_imports_run_one_way():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_help_imports_no_heavy_library():
    """`gru4rec --help` and the command modules load without torch, pandas or the service."""
    code = (
        "import sys; from gru4rec.cli import build_parser; build_parser(); "
        "heavy = [m for m in ('torch', 'pandas', 'pyarrow', 'fastapi', 'data_prep', 'service') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
