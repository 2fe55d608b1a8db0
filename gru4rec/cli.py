"""The `gru4rec` command: one entry point whose subcommands live beside the code they drive.

Each command module exposes `register(subparsers, common)`, adds its parser with `common` as a
parent (so --quiet/--verbose work after the subcommand too) and sets `func` to a callable taking the
parsed arguments. Heavy imports (torch, pandas) happen inside those callables so `--help` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from gru4rec import __version__
from gru4rec.errors import UserError
from gru4rec.logs import configure_logging

log = logging.getLogger("gru4rec")

COMMAND_MODULES = (
    "gru4rec.train_command",
    "gru4rec.evaluate_command",
    "gru4rec.compare_command",
    "gru4rec.tune_command",
    "gru4rec.export_command",
    "data_prep.prepare_command",
    "data_prep.synth_command",
    "service.serve_command",
)


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
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose, args.quiet)
    try:
        result = args.func(args)
    except UserError as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except BrokenPipeError:
        # the reader of our output went away (`gru4rec evaluate ... | head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
