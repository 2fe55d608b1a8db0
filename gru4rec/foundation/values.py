"""Reading a single value typed on the command line (`--set lr=0.1`, `vsknn:k=100`)."""

from __future__ import annotations

import tomllib
from typing import Any


def parse_value(raw: str) -> Any:
    """Read a value as TOML would (numbers, booleans, lists, quoted strings), else the raw text."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw
