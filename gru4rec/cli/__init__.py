"""The `gru4rec` command: the top of the house, one module per subcommand in this folder.

Each command module exposes `register(subparsers, common)`, adds its parser with `common` as a
parent (so --quiet/--verbose work after the subcommand too) and sets `func` to a callable taking the
parsed arguments. The modules import only argparse at the top; the stages they drive (torch, pandas,
the service) are imported inside those callables, so `--help` is instant.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from gru4rec import __version__
from gru4rec.cli import compare, evaluate, export, prepare, serve, synth, train, tune
from gru4rec.foundation.errors import GRU4RecError
from gru4rec.foundation.logs import configure_logging

log = logging.getLogger("gru4rec")

COMMANDS = (train, evaluate, compare, tune, export, prepare, synth, serve)


def _output_options(suppress: bool) -> argparse.ArgumentParser:
    """-v/-q, accepted before and after the subcommand.

    The subcommands' copy defaults to SUPPRESS so it cannot overwrite what was given before it.
    """
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("output")
    group.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS if suppress else 0, help="show debug messages")
    group.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS if suppress else False,
        help="only warnings and errors; no progress bars",
    )
    return parent


def build_parser() -> argparse.ArgumentParser:
    common = _output_options(suppress=True)
    parser = argparse.ArgumentParser(
        prog="gru4rec",
        description=(
            "GRU4Rec session-based recommendations: prepare click logs, train, evaluate and serve. "
            "Run `gru4rec COMMAND --help` for each command."
        ),
        parents=[_output_options(suppress=False)],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.register(subparsers, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose, args.quiet)
    try:
        result = args.func(args)
    except GRU4RecError as exc:
        log.error("%s", exc)
        return exc.exit_code
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except BrokenPipeError:
        # the reader of our output went away (`gru4rec evaluate ... | head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return int(result or 0)

