"""Logging set-up and progress bars shared by every command."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

_quiet = False
_handler: logging.Handler | None = None


def configure_logging(verbosity: int = 0, quiet: bool = False) -> None:
    """Route logs to stderr; -v shows debug messages, --quiet only warnings and errors.

    Only our own handler is replaced on a second call, so handlers others installed (pytest's
    caplog, an embedding application's) keep receiving records.
    """
    global _quiet, _handler
    _quiet = quiet
    level = logging.WARNING if quiet else (logging.DEBUG if verbosity > 0 else logging.INFO)
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root.addHandler(_handler)
    root.setLevel(level)


def progress(iterable: Iterable[T] | None = None, **kwargs: Any) -> Iterator[T] | tqdm:
    """A tqdm bar that is hidden under --quiet and when stderr is not a terminal."""
    kwargs.setdefault("disable", True if _quiet else None)
    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
