"""Prepared session files: TSV with the header `SessionId ItemId Time` (the authors' format) or Parquet.

Every part of the project reads and writes them through this module.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from gru4rec.atomic import atomic_file
from gru4rec.errors import UserError

COLUMNS = ("SessionId", "ItemId", "Time")


def read_session_file(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a prepared session file; ItemId comes back as str so ids of any kind map the same way.

    Accepts TSV (optionally .gz/.zip/.bz2/.xz compressed) and Parquet (by the .parquet suffix).
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file not found")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a session file")
    try:
        if path.suffix == ".parquet":
            df = pd.read_parquet(path)
        else:
            df = pd.read_csv(path, sep="\t", dtype={"ItemId": str, "SessionId": str}, engine="c")
    except UserError:
        raise
    except (ValueError, OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise UserError(f"{path}: cannot read as a session file ({exc})") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise UserError(
            f"{path}: missing column(s) {', '.join(missing)}; a session file needs the header "
            f"'SessionId<TAB>ItemId<TAB>Time' (found: {', '.join(map(str, df.columns)) or 'nothing'})"
        )
    df = df[list(COLUMNS)]
    if df.empty:
        raise UserError(f"{path}: no events")
    for col in ("SessionId", "ItemId"):
        bad = df[col].isna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0]) + 2  # +1 header, +1 one-based
            raise UserError(f"{path}: row {row}: empty {col}")
    df["ItemId"] = df["ItemId"].astype(str)
    df["SessionId"] = df["SessionId"].astype(str)
    time = pd.to_numeric(df["Time"], errors="coerce")
    bad = time.isna()
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0]) + 2
        raise UserError(f"{path}: row {row}: Time {df['Time'].iloc[row - 2]!r} is not a number (Unix seconds)")
    df["Time"] = time.astype(np.float64)
    return df


def write_session_file(df: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write atomically as TSV (or Parquet when the name ends in .parquet)."""
    path = Path(path)
    out = df[list(COLUMNS)]
    if path.suffix == ".parquet":
        with atomic_file(path, "wb") as fh:
            out.to_parquet(fh, index=False)
    else:
        with atomic_file(path, "w", newline="") as fh:
            out.to_csv(fh, sep="\t", index=False)
