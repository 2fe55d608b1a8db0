"""`gru4rec synth`: write a synthetic YooChoose-like click log (see data_prep.synth)."""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

from gru4rec.foundation.errors import UserError

log = logging.getLogger(__name__)

FORMATS = ("yoochoose", "tsv")


def register(subparsers, common) -> None:
    p = subparsers.add_parser(
        "synth",
        parents=[common],
        help="write a synthetic YooChoose-like click log",
        description=(
            "Generate a synthetic click log with the statistics of YooChoose (RSC15): Zipf-like item "
            "popularity that drifts from day to day, RSC15-like session lengths and repeat clicks, a "
            "daily traffic cycle, and learnable item-to-item transitions that also depend on the "
            "session so far. The same seed gives a byte-identical file. "
            "--format yoochoose writes raw yoochoose-clicks.dat rows (no header: session id, "
            "ISO-8601 UTC time, item id, category); tsv writes a prepared session file "
            "(SessionId, ItemId, Time header; Parquet when --out ends in .parquet). "
            "A .gz suffix compresses. Example: gru4rec synth --events 33000000 --items 37000 "
            "--out yoochoose-clicks.dat"
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--events", type=int, required=True, metavar="N", help="number of clicks (rows)")
    p.add_argument("--items", type=int, required=True, metavar="M",
                   help="catalogue size (2..N); a short log leaves some of the long tail unclicked")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (>= 0)")
    p.add_argument("--days", type=float, default=7.0, metavar="D", help="length of the time window in days")
    p.add_argument("--start", default="2014-04-01", metavar="DATE",
                   help="start of the time window (ISO date/time; UTC unless an offset is given)")
    p.add_argument("--format", default="yoochoose", metavar="{yoochoose,tsv}", help="output format")
    p.add_argument("--out", required=True, metavar="PATH", help="output file (written atomically)")
    p.set_defaults(func=run)


# bytes per click of the written file (measured: 46 yoochoose, 33 tsv, 9 gzip-compressed)
FILE_BYTES_PER_EVENT = {"yoochoose": 48, "tsv": 34, ".gz": 10, ".parquet": 12}


def _check_size(args: argparse.Namespace, out: Path) -> None:
    """Refuse at once what would run out of memory or disk after minutes of work."""
    from data_prep.synth import estimated_memory
    from gru4rec.foundation.memory import available_memory, format_bytes

    need, free = estimated_memory(args.events, args.items), available_memory()
    if free is not None and need > free:
        raise UserError(
            f"--events {args.events}: generating them needs about {format_bytes(need)} of memory, "
            f"{format_bytes(free)} is available; ask for fewer events"
        )
    per_event = FILE_BYTES_PER_EVENT.get(out.suffix, FILE_BYTES_PER_EVENT[args.format])
    size, parent = per_event * args.events, _existing_parent(out)
    disk = shutil.disk_usage(parent).free
    if size > disk:
        raise UserError(
            f"--events {args.events}: the file would take about {format_bytes(size)}, {parent} has "
            f"{format_bytes(disk)} free"
        )


def _existing_parent(path: Path) -> Path:
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return parent


def run(args: argparse.Namespace) -> int:
    if args.events < 1:
        raise UserError(f"--events must be at least 1, got {args.events}")
    if args.items < 2:
        raise UserError(f"--items must be at least 2, got {args.items}")
    if args.items > args.events:
        raise UserError(f"--items ({args.items}) must not exceed --events ({args.events})")
    if args.seed < 0:
        raise UserError(f"--seed must be non-negative, got {args.seed}")
    if not (args.days > 0 and args.days != float("inf")):
        raise UserError(f"--days must be a positive number, got {args.days}")
    if args.format not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {args.format!r}")
    from gru4rec.foundation.atomic import check_output_file

    out = check_output_file(args.out)
    _check_size(args, out)

    from data_prep import synth

    try:
        df = synth.generate_log(args.events, args.items, args.seed, days=args.days, start=args.start)
    except UserError as exc:
        if str(exc).startswith("start:"):
            raise UserError(f"--start{str(exc)[len('start'):]}") from None
        raise
    if args.format == "yoochoose":
        synth.write_yoochoose(df, out)
    else:
        synth.write_tsv(df, out)
    return 0
