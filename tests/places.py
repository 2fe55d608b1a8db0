"""Places on disk that tests need and cannot simply create (shared by the CLI and foundation tests)."""

from __future__ import annotations

from pathlib import Path

import pytest


def unwritable(tmp_path: Path) -> Path:
    """A directory this process cannot create files in (root ignores modes: use /sys or /proc then)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        (ro / "probe").touch()
    except OSError:
        return ro
    (ro / "probe").unlink()
    for candidate in (Path("/sys"), Path("/proc")):
        try:
            (candidate / "gru4rec-probe").touch()
        except OSError:
            return candidate
    pytest.skip("no place this process cannot write to")
