"""Logging set-up and progress bars shared by every command."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

_quiet = False


def configure_logging(verbosity: int = 0, quiet: bool = False) -> None:
    """Route library logs to stderr; -v shows debug messages, --quiet only warnings and errors."""
    global _quiet
    _quiet = quiet
    level = logging.WARNING if quiet else (logging.DEBUG if verbosity > 0 else logging.INFO)
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )


def progress(iterable: Iterable[T] | None = None, **kwargs: Any) -> Iterator[T] | tqdm:
    """A tqdm bar that is hidden under --quiet and when stderr is not a terminal."""
    kwargs.setdefault("disable", True if _quiet else None)
    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
