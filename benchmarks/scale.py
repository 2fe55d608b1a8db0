"""Scale benchmark: synthesise a log, prepare it, start training on it and evaluate on it, printing wall
time, events/s and peak memory per stage. Every stage runs in a process of its own, so its peak
resident memory is its own (os.wait4's ru_maxrss).

    python benchmarks/scale.py [--events 216000000] [--items 1800000] [--format otto] [--work DIR]
        [--stages synth prepare train evaluate] [--train-input parquet] [--batches 2000]
        [--eval-sessions 2000] [--params rsc15-xe] [--json OUT.json]

The defaults are OTTO-size: 216M events over 1.8M items written as OTTO JSON lines (about 11 GB). The
YooChoose-size run: --events 33000000 --items 37000 --format yoochoose.

synth     data_prep.synth.generate_log, in parts of at most --part-events events so memory stays
          bounded: part p has its own seed and the p-th slice of the time window, session ids continue
          from part to part, and each part's items are mapped to one catalogue by their popularity rank
          within the part (every part's most clicked item is catalogue item 0, and so on), so the
          catalogue has one Zipf-like popularity. OTTO lines get event types clicks/carts/orders
          (90/8/2%). Not timed against a target.
prepare   `gru4rec prepare LOG --format F --parquet` with the default (classic RSC15) recipe.
train     read train_full (--train-input parquet or tsv) with the training loader, build the trainer
          (the memory check included), run --batches mini-batches with --params: "first batch" is the
          time from the process start to the end of the first mini-batch and the memory then (CPU s: the stage's user + system time, a figure that other processes on the machine do not inflate);
          events/s is over the mini-batches after the first, by the wall clock and by the training thread's CPU
          time (steadier on a shared machine). The weights and item ids are kept for
          the next stage.
evaluate  read test against those items and evaluate its first --eval-sessions sessions (full
          ranking, next-item protocol, cut-offs 1 5 10 20 with coverage/popularity), then replay the
          same events with the bare score products only (benchmarks/eval_throughput.py), in the
          same process: "x bare" is evaluation's time over the products'.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

STAGES = ("synth", "prepare", "train", "evaluate")
OTTO_TYPES = ("clicks", "carts", "orders")
OTTO_TYPE_SHARES = (0.90, 0.08, 0.02)


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


# --------------------------------------------------------------------------------------- synth


def _otto_lines(session, aid, ts_ms, kind) -> memoryview:
    """The events (grouped by session) as OTTO JSON lines, built with Arrow string kernels."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    text = lambda values: pc.cast(pa.array(values), pa.string())  # noqa: E731
    types = pa.array(OTTO_TYPES).take(pa.array(kind))
    events = pc.binary_join_element_wise('{"aid":', text(aid), ',"ts":', text(ts_ms), ',"type":"', types, '"}', "")
    starts = np.flatnonzero(np.r_[True, session[1:] != session[:-1]])
    lists = pa.ListArray.from_arrays(pa.array(np.r_[starts, len(session)].astype(np.int32)), events)
    lines = pc.binary_join_element_wise('{"session":', text(session[starts]), ',"events":[',
                                        pc.binary_join(lists, ","), "]}\n", "")
    offsets = lines.buffers()[1]
    first, last = (np.frombuffer(offsets, dtype=np.int32, count=len(lines) + 1, offset=lines.offset * 4)[[0, -1]])
    return memoryview(lines.buffers()[2])[first:last]


def _parts(args):
    """The log's parts as frames (SessionId, ItemId, Time), ids continued and mapped as described above."""
    import numpy as np
    import pandas as pd

    from data_prep.synth import generate_log

    parts = max(1, math.ceil(args.events / args.part_events))
    days, sessions = args.days / parts, 0
    for p in range(parts):
        n = args.events // parts + (1 if p < args.events % parts else 0)
        start = pd.Timestamp(args.start, tz="UTC") + pd.Timedelta(days=p * days)
        df = generate_log(n, args.items, args.seed + p, days=days, start=start.isoformat())
        if parts > 1 or args.format == "otto":
            values, inverse, counts = np.unique(df["ItemId"].to_numpy(), return_inverse=True, return_counts=True)
            rank = np.empty(len(values), dtype=np.int64)
            rank[np.argsort(-counts, kind="stable")] = np.arange(len(values))
            df["ItemId"] = rank[inverse]
            df.attrs = {}
        df["SessionId"] += sessions
        sessions = int(df["SessionId"].iloc[-1])
        yield p, df


def _write_otto(df, fh, seed: int) -> None:
    import numpy as np

    session, item = df["SessionId"].to_numpy(), df["ItemId"].to_numpy()
    ms = np.rint(df["Time"].to_numpy() * 1000).astype(np.int64)
    kind = np.random.default_rng(seed).choice(len(OTTO_TYPES), size=len(df), p=OTTO_TYPE_SHARES)
    lo = 0
    while lo < len(df):  # whole sessions per chunk
        hi = min(len(df), lo + (1 << 22))
        while hi < len(df) and session[hi] == session[hi - 1]:
            hi += 1
        fh.write(_otto_lines(session[lo:hi], item[lo:hi], ms[lo:hi], kind[lo:hi]))
        lo = hi


def synth_stage(args) -> dict:
    """Write the log (see the module docstring); returns what was written."""
    from data_prep.synth import write_yoochoose

    out = Path(args.work) / ("log.jsonl" if args.format == "otto" else "log.dat")
    tmp = out.with_name(out.name + ".tmp")
    written = 0
    with open(tmp, "wb") as fh:
        for p, df in _parts(args):
            if args.format == "otto":
                _write_otto(df, fh, args.seed + p)
            else:
                part = Path(args.work) / f"part{p}.dat"
                write_yoochoose(df, part)
                with open(part, "rb") as src:
                    while chunk := src.read(1 << 24):
                        fh.write(chunk)
                part.unlink()
            written += len(df)
            del df
    os.replace(tmp, out)
    return {"events": written, "path": str(out), "bytes": out.stat().st_size}


# --------------------------------------------------------------------------------------- prepare


def prepare_stage(args) -> dict:
    from gru4rec.cli import main

    log = Path(args.work) / ("log.jsonl" if args.format == "otto" else "log.dat")
    out = Path(args.work) / "prepared"
    code = main(["prepare", "-q", str(log), "--format", args.format, "--parquet", "--out", str(out)])
    if code:
        raise SystemExit(code)
    stats = json.loads((out / "stats.json").read_text())
    full = stats["splits"]["train_full"]
    return {"events": stats["steps"][0]["events"], "train_full": [full["events"], full["sessions"], full["items"]],
            "test_events": stats["splits"]["test"]["events"]}


# --------------------------------------------------------------------------------------- train


def train_stage(args) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from gru4rec.data.sessions import load_training_data
    from gru4rec.training.batching import session_parallel_steps
    from gru4rec.training.memory import check_training_memory, estimate_training_memory
    from gru4rec.training.params import load_params
    from gru4rec.training.trainer import Trainer

    work = Path(args.work)
    begin = time.time()
    sessions, item_map, counts, events = load_training_data(work / "prepared" / f"train_full.{args.train_input}")
    del events
    loaded, load_peak = time.time(), peak_gb()
    params = load_params(args.params)
    data = sessions.items.nbytes + sessions.offsets.nbytes
    check_training_memory(estimate_training_memory(len(item_map), params.model, params.training, loaded=data),
                          torch.device("cpu"))
    trainer = Trainer(params, sessions, counts, torch.device("cpu"), seed=1)
    built = time.time()
    torch.set_num_threads(trainer.threads or torch.get_num_threads())
    first = first_peak = None
    done = first_events = 0
    hidden = trainer.model.init_hidden(min(params.training.batch_size, sessions.n_sessions))
    for k, step in enumerate(session_parallel_steps(sessions, params.training.batch_size)):
        if step.keep is not None:
            hidden = [h.index_select(0, torch.from_numpy(step.keep)) for h in hidden]
        if step.reset is not None:
            for h in hidden:
                h.index_fill_(0, torch.from_numpy(step.reset), 0.0)
        pos = torch.from_numpy(step.positions)
        _, hidden = trainer.train_step(trainer.items[pos], trainer.items[pos + 1], hidden)
        done += len(pos)
        if first is None:
            first, first_peak, first_events, first_cpu = time.time(), peak_gb(), done, time.thread_time()
        if k + 1 >= args.batches:
            break
    end, end_cpu = time.time(), time.thread_time()
    torch.save(trainer.model.state_dict(), work / "model.pt")
    pq.write_table(pa.table({"item": item_map.arrow, "count": counts}), work / "items.parquet")
    return {
        "events": done, "events_per_s": (done - first_events) / max(end - first, 1e-9), "load_s": loaded - begin,
        "events_per_cpu_s": (done - first_events) / max(end_cpu - first_cpu, 1e-9),
        "load_peak_gb": load_peak, "build_s": built - loaded, "first_batch_at": first, "first_batch_peak_gb": first_peak,
        "train_events": int(sessions.n_events), "items": len(item_map), "batches": k + 1,
    }


# --------------------------------------------------------------------------------------- evaluate


def evaluate_stage(args) -> dict:
    import pyarrow.parquet as pq
    import torch

    from eval_throughput import bare_score_products
    from gru4rec.data.sessions import ItemMap, Sessions, load_eval_data
    from gru4rec.evaluation.protocol import ModelScorer, evaluate
    from gru4rec.model.network import GRU4Rec
    from gru4rec.training.params import load_params

    work = Path(args.work)
    items = pq.read_table(work / "items.parquet")
    item_map, counts = ItemMap(items.column("item")), items.column("count").to_numpy()
    model = GRU4Rec(len(item_map), load_params(args.params).model)
    model.load_state_dict(torch.load(work / "model.pt", weights_only=True))
    model.eval()
    begin = time.time()
    sessions, _ = load_eval_data(work / "prepared" / f"test.{args.train_input}", item_map)
    loaded = time.time()
    k = min(args.eval_sessions, sessions.n_sessions)
    sessions = Sessions(sessions.items[: sessions.offsets[k]], sessions.offsets[: k + 1], sessions.session_ids[:k])
    scorer = ModelScorer(model)
    start = time.perf_counter()
    result = evaluate(scorer, sessions, item_counts=counts, batch_size=512)
    middle = time.perf_counter()
    predictions = bare_score_products(scorer, sessions, 512)
    end = time.perf_counter()
    assert predictions == result.n_events
    return {
        "events": result.n_events, "events_per_s": result.n_events / (middle - start),
        "bare_products_per_s": predictions / (end - middle), "x_bare": (middle - start) / (end - middle),
        "load_s": loaded - begin, "sessions": k, "items": len(item_map), "threads": torch.get_num_threads(),
        "recall@20": result.metrics["recall@20"], "coverage@20": result.metrics["coverage@20"],
    }


# --------------------------------------------------------------------------------------- driver


def run_stage(stage: str, argv: list[str]) -> dict:
    """Run one stage in a child process; its report plus wall time and the child's own peak memory."""
    spawned = time.time()
    child = subprocess.Popen([sys.executable, __file__, "--child", stage, *argv], stdout=subprocess.PIPE, text=True)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.time() - spawned
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"stage {stage} failed (exit {os.waitstatus_to_exitcode(status)})")
    report = json.loads(output.strip().splitlines()[-1])
    report.update(stage=stage, wall_s=wall, cpu_s=usage.ru_utime + usage.ru_stime, peak_gb=usage.ru_maxrss / 1e6)
    if "first_batch_at" in report:
        report["first_batch_s"] = report.pop("first_batch_at") - spawned
    return report


def describe(report: dict) -> str:
    stage = report["stage"]
    if stage == "prepare":
        return "train_full {:,} events, {:,} sessions, {:,} items; test {:,} events".format(
            *report["train_full"], report["test_events"])
    if stage == "train":
        return (f"{report['train_events']:,} events, {report['items']:,} items: loaded in {report['load_s']:.1f} s "
                f"(peak {report['load_peak_gb']:.2f} GB), trainer built in {report['build_s']:.1f} s, first mini-batch "
                f"after {report['first_batch_s']:.1f} s at {report['first_batch_peak_gb']:.2f} GB; {report['batches']} "
                f"mini-batches at {report['events_per_cpu_s']:,.0f} events per CPU second (the training thread's)")
    if stage == "evaluate":
        return (f"{report['sessions']:,} test sessions over {report['items']:,} items, {report['threads']} threads: "
                f"bare products {report['bare_products_per_s']:,.0f} ev/s, evaluation x{report['x_bare']:.2f} of them; "
                f"recall@20 {report['recall@20']:.4f}")
    return f"{report['bytes'] / 1e9:.1f} GB written"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=216_000_000)
    ap.add_argument("--items", type=int, default=1_800_000)
    ap.add_argument("--format", choices=["otto", "yoochoose"], default="otto")
    ap.add_argument("--days", type=float, default=28.0, help="time window of the log (OTTO: 4 weeks)")
    ap.add_argument("--start", default="2022-08-01")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--part-events", type=int, default=25_000_000, help="events synthesised at once")
    ap.add_argument("--work", default="scale-work", help="directory for the log, the prepared data and the model")
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    ap.add_argument("--train-input", choices=["parquet", "tsv"], default="parquet")
    ap.add_argument("--batches", type=int, default=2000, help="training mini-batches to run")
    ap.add_argument("--eval-sessions", type=int, default=2000, help="test sessions to evaluate")
    ap.add_argument("--params", default="rsc15-xe")
    ap.add_argument("--json", metavar="OUT.json")
    ap.add_argument("--child", choices=STAGES, help=argparse.SUPPRESS)
    args, _ = ap.parse_known_args()
    if args.child:
        report = {"synth": synth_stage, "prepare": prepare_stage, "train": train_stage, "evaluate": evaluate_stage}[
            args.child](args)
        print(json.dumps(report), flush=True)
        return 0
    Path(args.work).mkdir(parents=True, exist_ok=True)
    argv = [a for a in sys.argv[1:]]
    print(f"{args.events:,} events over {args.items:,} items, {args.format}; stages {' '.join(args.stages)}; "
          f"params {args.params}; {os.cpu_count()} CPUs", flush=True)
    print("| stage | wall s | CPU s | events | events/s | peak GB | details |\n|---|---|---|---|---|---|---|", flush=True)
    reports = []
    for stage in args.stages:
        report = run_stage(stage, argv)
        reports.append(report)
        rate = report.get("events_per_s") or report.get("events", 0) / report["wall_s"]
        print(f"| {stage} | {report['wall_s']:.1f} | {report['cpu_s']:.1f} | {report.get('events', 0):,} | {rate:,.0f} | "
              f"{report['peak_gb']:.2f} | {describe(report)} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
