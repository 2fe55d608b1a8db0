"""`gru4rec prepare`: raw click log -> train_full / test / train_tr / train_valid session files + stats."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)

DESCRIPTION = """\
Turn a raw click log into the session files GRU4Rec trains and evaluates on.

Steps: read the log; keep the chosen event types; build sessions from a user id by an inactivity gap
if the log has no session ids; order events by session and time; optionally collapse consecutive
repeat clicks; drop short sessions and rare items; split off the last --test-days as the test set;
split train_full the same way into train_tr / train_valid for tuning.

The defaults are the classic RSC15 (YooChoose) recipe of the GRU4Rec papers. The 2023 recipe is
  --event-types clicks,views --collapse-repeats --iterate --split-rule start
(with --test-days 7 for RetailRocket and Diginetica).

Output (--out DIR, replaced as a whole and only when everything succeeded): train_full.tsv, test.tsv,
train_tr.tsv, train_valid.tsv (tab-separated, header SessionId ItemId Time, Unix seconds; sessions
ordered by their first event, events in time order), .parquet copies with --parquet, and stats.json
with the counts, session-length quantiles and time span of every split and the options used.
"""

EPILOG = """\
examples:
  gru4rec prepare yoochoose-clicks.dat --out data/rsc15
  gru4rec prepare yoochoose-clicks.dat --recent-fraction 0.015625 --out data/rsc15_64
  gru4rec prepare train-item-views.csv --format diginetica --test-days 7 --out data/digi
  gru4rec prepare events.csv --user-col visitorid --item-col itemid --time-col timestamp \\
      --type-col event --event-types view --collapse-repeats --iterate --split-rule start --out data/rr
"""


def _event_types(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def register(subparsers, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "prepare",
        parents=[common],
        help="clean, filter and time-split a raw click log into session files",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=_Formatter,
    )
    p.add_argument("input", help="the raw click log: plain, .gz or a .zip holding one file")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output directory; written atomically, an earlier prepare output there is replaced")
    _input_options(p.add_argument_group("input format"))
    _session_options(p.add_argument_group("sessions and events"))
    _filter_options(p.add_argument_group("filters"))
    _split_options(p.add_argument_group("split"))
    g = p.add_argument_group("output files")
    g.add_argument("--parquet", action="store_true", help="also write a .parquet copy of each split")
    p.set_defaults(func=run)


def _input_options(g) -> None:
    g.add_argument(
        "--format", default="auto", choices=("auto", "yoochoose", "csv", "tsv", "parquet", "diginetica", "otto"),
        help="yoochoose: raw yoochoose-clicks.dat (no header: session,ISO time,item,category); "
             "csv/tsv/parquet: a table with a header, columns chosen below; diginetica: train-item-views.csv "
             "(';'-separated, time = eventdate + timeframe ms); otto: OTTO JSON lines (one session per line); "
             "auto: guess from the file name and first line",
    )
    g.add_argument("--session-col", default="SessionId", metavar="NAME",
                   help="csv/tsv/parquet: column holding the session id")
    g.add_argument("--item-col", default="ItemId", metavar="NAME", help="csv/tsv/parquet: column holding the item id")
    g.add_argument("--time-col", default="Time", metavar="NAME", help="csv/tsv/parquet: column holding the time")
    g.add_argument("--user-col", default=None, metavar="NAME",
                   help="csv/tsv/parquet: build sessions from this user id column by the inactivity gap "
                        "(--session-gap) instead of reading a session column")
    g.add_argument("--type-col", default=None, metavar="NAME",
                   help="csv/tsv/parquet: column holding the event type, for --event-types")
    g.add_argument("--time-unit", default="auto", choices=("auto", "s", "ms", "iso"),
                   help="csv/tsv/parquet: how the time column is written: Unix seconds, Unix milliseconds, "
                        "ISO-8601 date-times (naive ones are UTC), or auto: ISO if not numbers, else "
                        "milliseconds when values exceed 1e11, seconds otherwise")


def _session_options(g) -> None:
    g.add_argument("--session-gap", type=float, default=3600.0, metavar="SECONDS",
                   help="with --user-col: a new session starts after more than this many seconds of inactivity")
    g.add_argument("--event-types", type=_event_types, default=None, metavar="T1,T2",
                   help="keep only these event types (e.g. clicks,views; OTTO has clicks, carts, orders); "
                        "default: keep all events")
    g.add_argument("--collapse-repeats", action="store_true",
                   help="collapse consecutive repeats of the same item in a session (i,i,j -> i,j); off keeps "
                        "them, as the classic RSC15 recipe does")


def _filter_options(g) -> None:
    g.add_argument("--min-session-length", type=int, default=2, metavar="N",
                   help="drop sessions with fewer events (before the split, and again after filtering test "
                        "to training items)")
    g.add_argument("--min-item-support", type=int, default=5, metavar="N",
                   help="drop items with fewer events (1 disables the filter)")
    g.add_argument("--iterate", action="store_true",
                   help="repeat the session and item filters until nothing changes; default is the classic "
                        "single pass: short sessions, rare items, short sessions again")


def _split_options(g) -> None:
    g.add_argument("--test-days", type=float, default=1.0, metavar="DAYS",
                   help="length of the test window at the end of the log (fractions allowed); train_valid is "
                        "the same window at the end of train_full")
    g.add_argument("--split-rule", default="classic", choices=("classic", "start"),
                   help="classic: a session is test if its LAST event is in the window; test then keeps only "
                        "items seen in training and drops sessions shorter than --min-session-length. start: "
                        "a session is test if it STARTS in the window; sessions straddling the boundary lose "
                        "their later events in train; test is not filtered to training items")
    g.add_argument("--recent-fraction", type=float, default=None, metavar="F",
                   help="keep only the most recent fraction F of training sessions (by last event time), e.g. "
                        "0.015625 or 0.25 for the YooChoose 1/64 and 1/4 variants; applied before test is "
                        "filtered to training items. Default: keep all")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults (except for options that are off unless given) and keep the description's line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None:
            return action.help or ""
        return super()._get_help_string(action)


def run(args: argparse.Namespace) -> int:
    from data_prep.prepare import PrepareOptions, format_stats_table, prepare
    from data_prep.readers import ColumnMap

    columns = ColumnMap(
        session=args.session_col,
        item=args.item_col,
        time=args.time_col,
        user=args.user_col,
        type=args.type_col,
        time_unit=args.time_unit,
    )
    options = PrepareOptions(
        event_types=args.event_types,
        session_gap=args.session_gap,
        collapse_repeats=args.collapse_repeats,
        min_session_length=args.min_session_length,
        min_item_support=args.min_item_support,
        iterate=args.iterate,
        test_days=args.test_days,
        split_rule=args.split_rule,
        recent_fraction=args.recent_fraction,
    )
    stats = prepare(args.input, args.out, fmt=args.format, columns=columns, options=options, parquet=args.parquet)
    print(format_stats_table(stats))
    print(f"\nwrote {args.out} (statistics in {args.out}/stats.json)")
    return 0
