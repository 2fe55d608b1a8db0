"""Throughput of `gru4rec prepare` on a full-size (RSC15: 33 million clicks) raw YooChoose log.

    .venv/bin/python benchmarks/prepare_throughput.py [--events 33000000] [--workdir /tmp/gru4rec-bench]

Generates a synthetic raw `yoochoose-clicks.dat` with `data_prep.synth` (cached in --workdir, so only
the first run pays for it), then runs `gru4rec prepare` on it as a child process under
`/usr/bin/time -v` (or, where that is missing, by polling the child's peak RSS in /proc) and prints
wall time, peak RSS and events/s. Exits 1 when the run is over the budget (--max-seconds,
--max-rss-gb; the targets for a 2-core machine are 60 s and 6 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_log(path: Path, n_events: int, n_items: int, seed: int) -> None:
    from data_prep.synth import generate_log, write_yoochoose

    t0 = time.perf_counter()
    df = generate_log(n_events, n_items, seed)
    write_yoochoose(df, path)
    print(f"generated {path} ({n_events:,} events, {path.stat().st_size / 1e9:.2f} GB) in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)


def _peak_rss_proc(pid: int) -> int:
    """VmHWM (peak RSS, bytes) of a live process, 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def run_prepare(log_path: Path, out: Path, extra: list[str]) -> tuple[float, int, str, int]:
    """(wall seconds, peak RSS bytes, stderr, exit code) of one `gru4rec prepare` child process."""
    cmd = [sys.executable, "-m", "gru4rec.cli", "prepare", str(log_path), "--format", "yoochoose",
           "--out", str(out), *extra]
    timer = shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").exists() else None)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if timer:
        cmd = [timer, "-v", *cmd]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    peak = 0
    if timer:
        stdout, stderr = proc.communicate()
    else:  # poll /proc while it runs
        while proc.poll() is None:
            peak = max(peak, _peak_rss_proc(proc.pid))
            time.sleep(0.05)
        stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    if timer:
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
        peak = int(m.group(1)) * 1024 if m else 0
        m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", stderr)
        if m:
            wall = int(m.group(1) or 0) * 3600 + int(m.group(2)) * 60 + float(m.group(3))
    print(stdout, end="")
    return wall, peak, stderr, proc.returncode


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=33_000_000, help="clicks in the synthetic log (default: %(default)s)")
    ap.add_argument("--items", type=int, default=52_739, help="catalogue size (default: %(default)s, as RSC15)")
    ap.add_argument("--seed", type=int, default=1, help="generator seed (default: %(default)s)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/gru4rec-bench"),
                    help="where the log is cached and the output written (default: %(default)s)")
    ap.add_argument("--max-seconds", type=float, default=60.0, help="wall-time budget (default: %(default)s)")
    ap.add_argument("--max-rss-gb", type=float, default=6.0, help="peak RSS budget in GB (default: %(default)s)")
    ap.add_argument("--show-log", action="store_true", help="print the command's log (step timings)")
    ap.add_argument("prepare_args", nargs="*", help="extra arguments for gru4rec prepare (after --)")
    args = ap.parse_args(argv)

    args.workdir.mkdir(parents=True, exist_ok=True)
    log_path = args.workdir / f"yoochoose-clicks-synth-{args.events}-{args.items}-{args.seed}.dat"
    if not log_path.exists():
        make_log(log_path, args.events, args.items, args.seed)
    else:
        print(f"reusing {log_path} ({log_path.stat().st_size / 1e9:.2f} GB)")
    out = args.workdir / "prepared"
    wall, peak, stderr, rc = run_prepare(log_path, out, ["-v", *args.prepare_args])
    if args.show_log or rc != 0:
        print("\n".join(line for line in stderr.splitlines() if not line.startswith("\t")), file=sys.stderr)
    if rc != 0:
        print(f"gru4rec prepare failed with exit code {rc}", file=sys.stderr)
        return rc
    stats = json.loads((out / "stats.json").read_text())
    n_read = stats["steps"][0]["events"]
    result = {
        "events": n_read,
        "bytes": log_path.stat().st_size,
        "wall_s": round(wall, 2),
        "peak_rss_gb": round(peak / 1e9, 3),
        "events_per_s": round(n_read / wall),
        "cpus": os.cpu_count(),
    }
    print(f"\ngru4rec prepare on {n_read:,} events ({result['bytes'] / 1e9:.2f} GB): wall {wall:.1f} s, "
          f"peak RSS {peak / 1e9:.2f} GB, {n_read / wall / 1e6:.2f} M events/s")
    print(json.dumps(result))
    ok = wall <= args.max_seconds and peak <= args.max_rss_gb * 1e9
    if not ok:
        print(f"OVER BUDGET (limits {args.max_seconds} s, {args.max_rss_gb} GB)", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
