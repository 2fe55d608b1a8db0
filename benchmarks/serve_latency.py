"""Latency of `gru4rec serve` under open-loop load, over real HTTP on localhost.

For each model (3k items: RSC15 100k sample, rsc15-xe parameters, 1 epoch; 37k, 100k and 1.8m
items: synthetic logs from data_prep.synth, layers=[100], 1 epoch) the script starts `gru4rec serve`
as a subprocess and sends requests from this process (the load generator: raw asyncio sockets over
keep-alive connections) at fixed rates. Requests are scheduled at fixed times whatever the answers
do (open loop), and latency is measured from the scheduled time, so a server that falls behind shows
its queueing delay instead of slowing the generator down (no coordinated omission).

Scenarios:
  (a) click   POST /v1/sessions/{id}/events {"item_id", "k": 20}: one GRU step on a stored session
  (b) history POST /v1/recommend {"items": [10 ids], "k": 20}: stateless, 10 GRU steps

(a) also runs with 2 workers sharing sessions through Redis (needs redis-server on localhost:6379).
Each row also shows the server's CPU time per request (all its processes), its memory (RSS, all
processes) and, from its /metrics, the mean batch size and the mean time a batch's first request
waited (servers without those metrics show "-"), the load average after it, and the share of the
machine's CPU time that the hypervisor gave to other guests during it (steal, from /proc/stat): on a
shared virtual machine the same server is slower with longer tails while that is above zero.

For a model served with the approximate top-k index, --overlap N then sends N session prefixes
from the synthetic log twice, as served and with "exact": true, and prints the mean share of the
top-20 the two have in common, and the index's build time (a fresh build with --rebuild-index).

--server-repo runs the server from another checkout (e.g. a `git worktree` of an older commit), with
the same load generator, for before/after tables.

    .venv/bin/python benchmarks/serve_latency.py                      # everything (prepares models once)
    .venv/bin/python benchmarks/serve_latency.py --models 37k --rates 500 --duration 10
    .venv/bin/python benchmarks/serve_latency.py --models 1.8m --scenarios click --rates 250 500 --overlap 500
    .venv/bin/python benchmarks/serve_latency.py --models 1.8m --scenarios click --two-workers no --rates \
        --overlap 500 --rebuild-index                                 # overlap and index build time only

Models and data are cached in --work-dir; results are printed as a table and written to
WORK_DIR/results.json.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RSC15 = REPO.parent / "shared" / "data" / "rsc15_100k" / "yoochoose-clicks-100k_train_full.txt.gz"
REDIS_URL = os.environ.get("GRU4REC_BENCH_REDIS_URL", "redis://localhost:6379/14")

# Synthetic logs: (events, catalogue size given to the generator) giving about 37k / 100k distinct
# items (a Zipf-like log misses part of the tail). Training uses a larger batch and fewer sampled
# negatives than the defaults so that one epoch fits a 2-core machine; serving cost does not depend
# on either.
SYNTH = {"37k": (520_000, 49_000), "100k": (1_400_000, 142_000), "1.8m": (12_000_000, 4_000_000)}
SYNTH_PARAMS = ["layers=[100]", "n_epochs=1", "batch_size=256", "n_sample=512"]

log = logging.getLogger("serve_latency")


# -- models -------------------------------------------------------------------------------------------
def prepare_model(name: str, work: Path) -> Path:
    """Train (once) and return the model directory for `name` (3k, 37k or 100k)."""
    from gru4rec.training.params import load_params
    from gru4rec.training.run import train

    out = work / f"model-{name}"
    if (out / "metadata.json").exists() and not (out / "resume.pt").exists():
        return out
    started = time.perf_counter()
    if name == "3k":
        if not RSC15.exists():
            raise SystemExit(f"{RSC15} not found (the RSC15 sample lives in ../shared/data)")
        train(RSC15, out, load_params("rsc15-xe", ["n_epochs=1"]), device="cpu")
    else:
        from data_prep.synth import generate_log, write_tsv

        n_events, n_items = SYNTH[name]
        data = work / f"synth-{name}.tsv"
        if not data.exists():
            write_tsv(generate_log(n_events, n_items, seed=7), data)
        train(data, out, load_params(None, SYNTH_PARAMS), device="cpu")
    log.info("trained %s in %.0f s", out, time.perf_counter() - started)
    return out


def catalogue(model_dir: Path) -> list[str]:
    return json.loads((model_dir / "metadata.json").read_text())["item_ids"]


# -- server ---------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`gru4rec serve` in a subprocess (its own process group, so stopping it stops every worker)."""

    def __init__(self, model_dir: Path, workers: int, redis_prefix: str | None, repo: Path = REPO,
                 retrieval: str | None = None) -> None:
        self.port = free_port()
        env = {**os.environ, "GRU4REC_RELOAD_POLL_S": "0", "PYTHONPATH": str(repo)}
        if retrieval:
            env["GRU4REC_RETRIEVAL"] = retrieval
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        if redis_prefix:
            env.update(GRU4REC_REDIS_URL=REDIS_URL, GRU4REC_REDIS_PREFIX=redis_prefix)
        else:
            env.pop("GRU4REC_REDIS_URL", None)
        cmd = [sys.executable, "-m", "gru4rec.cli", "serve", str(model_dir), "--port", str(self.port),
               "--workers", str(workers), "-q"]
        self.log_file = open(model_dir.parent / f"server-{self.port}.log", "w")
        self.proc = subprocess.Popen(cmd, env=env, cwd=repo, stdout=self.log_file, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.workers = workers

    def wait_ready(self, timeout: float = 120) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        ready = 0
        while ready < 3 * self.workers:  # a few answers in a row, so every worker is likely up
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited: see {self.log_file.name}")
            try:
                ready = ready + 1 if httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2).status_code == 200 else 0
            except httpx.HTTPError:
                ready = 0
            if time.monotonic() > deadline:
                raise SystemExit(f"server not ready after {timeout} s: see {self.log_file.name}")
            time.sleep(0.2)

    def _tree(self) -> tuple[set[int], dict[int, tuple[int, int]]]:
        """The server's process tree and every process's (ppid, utime + stime ticks)."""
        stats = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                stats[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
        tree = {self.proc.pid}
        changed = True
        while changed:
            changed = False
            for pid, (ppid, _) in stats.items():
                if ppid in tree and pid not in tree:
                    tree.add(pid)
                    changed = True
        return tree, stats

    def cpu_seconds(self) -> float:
        """CPU time used so far by the server and its worker processes (user + system)."""
        tree, stats = self._tree()
        return sum(stats.get(pid, (0, 0))[1] for pid in tree) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        """Resident memory of the server and its workers, MB."""
        total = 0
        for pid in self._tree()[0]:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except OSError:
                continue
        return total / 1024

    def batch_counters(self) -> dict[str, float]:
        """gru4rec_batch_size / _wait_seconds sums and counts from /metrics ({} when the server has none)."""
        import httpx

        text = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=10).text
        out = {}
        for line in text.splitlines():
            for name in ("gru4rec_batch_size_sum", "gru4rec_batch_size_count", "gru4rec_batch_wait_seconds_sum"):
                if line.startswith(name + " "):
                    out[name] = float(line.split()[1])
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log_file.close()


# -- load generator ---------------------------------------------------------------------------------------
class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def request(self, raw: bytes) -> int:
        """Send one HTTP/1.1 request, read the whole answer; returns the status code."""
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
                break
        if length:
            await self.reader.readexactly(length)
        return status


def build_request(port: int, path: str, body: dict) -> bytes:
    payload = json.dumps(body, separators=(",", ":")).encode()
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload


@dataclass
class Result:
    model: str
    n_items: int
    scenario: str
    workers: int
    store: str
    rate: float
    sent: int
    ok: int
    errors: int
    achieved_rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    service_p99_ms: float  # from the moment the request was written (leaves out the generator's own lateness)
    server_cpu_us: float  # server CPU time per request (all its processes and threads)
    mean_batch: float | None  # requests per batched model call (None: the server has no batching metrics)
    mean_wait_ms: float | None  # time a batch's first request waited before the batch ran
    server_rss_mb: float  # resident memory of the server (all processes) after the run
    load_avg: float  # the machine's 1-minute load average after the run (other work on a shared machine shows here)
    steal_pct: float | None  # share of the machine's CPU time the hypervisor took during the run (Linux; a VM's neighbours)


async def open_loop(port: int, requests: list[bytes], rate: float, connections: int) -> tuple[np.ndarray, np.ndarray, int, float]:
    """Send requests[i] at start + i / rate. Returns each request's latency from its scheduled time
    and from the moment it was written (seconds; NaN for failures), the error count and the time
    from the first scheduled send to the last answer. Timing uses perf_counter: uvloop's loop clock
    only has millisecond resolution."""
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(connections):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.transport.set_write_buffer_limits(0)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pool.put_nowait(Connection(reader, writer))
    n = len(requests)
    latency = np.full(n, np.nan)
    service = np.full(n, np.nan)
    errors = 0
    done_at = 0.0
    clock = time.perf_counter

    async def one(i: int, scheduled: float) -> None:
        nonlocal errors, done_at
        conn = await pool.get()
        sent = clock()
        try:
            status = await conn.request(requests[i])
        except (OSError, asyncio.IncompleteReadError, ValueError):
            errors += 1
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            conn = Connection(reader, writer)
            status = 0
        finally:
            pool.put_nowait(conn)
        now = clock()
        done_at = max(done_at, now)
        if status == 200:
            latency[i] = now - scheduled
            service[i] = now - sent
        else:
            errors += 1

    start = clock() + 0.05
    tasks = []
    for i in range(n):
        scheduled = start + i / rate
        delay = scheduled - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, scheduled)))
    await asyncio.gather(*tasks)
    while not pool.empty():
        pool.get_nowait().writer.close()
    return latency, service, errors, done_at - start


def scenario_requests(scenario: str, port: int, items: list[str], n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    if scenario == "click":
        # 2,000 concurrent sessions, each getting clicks in turn
        return [
            build_request(port, f"/v1/sessions/bench-{seed}-{i % 2000}/events", {"item_id": rng.choice(items), "k": 20})
            for i in range(n)
        ]
    return [build_request(port, "/v1/recommend", {"items": rng.sample(items, 10), "k": 20}) for i in range(n)]


def run_point(port: int, scenario: str, items: list[str], rate: float, duration: float, seed: int):
    n = max(1, int(rate * duration))
    reqs = scenario_requests(scenario, port, items, n, seed)
    connections = min(256, max(16, int(rate * 0.1)))
    gc.collect()
    gc.disable()  # a collection pausing the generator would show up as server latency
    try:
        import uvloop  # installed with uvicorn[standard]; a faster generator leaves more CPU to the server

        return uvloop.run(open_loop(port, reqs, rate, connections))
    except ImportError:
        return asyncio.run(open_loop(port, reqs, rate, connections))
    finally:
        gc.enable()


def measure(args, name: str, model_dir: Path, scenario: str, workers: int, use_redis: bool) -> list[Result]:
    items = catalogue(model_dir)
    prefix = f"bench-{os.getpid()}-{name}-{scenario}-{workers}:" if use_redis else None
    server = Server(model_dir, workers, prefix, args.server_repo, args.retrieval)
    results = []
    try:
        server.wait_ready(args.start_timeout)
        if args.rates:  # warm-up (threads, allocator, caches)
            run_point(server.port, scenario, items, min(250, args.rates[0]), 3.0, seed=1)
        for j, rate in enumerate(args.rates):
            cpu_before, batches_before, steal_before = server.cpu_seconds(), server.batch_counters(), steal_ticks()
            latency, service, errors, elapsed = run_point(server.port, scenario, items, rate, args.duration, seed=100 + j)
            cpu, batches, steal = server.cpu_seconds() - cpu_before, server.batch_counters(), steal_share(steal_before)
            results.append(result_row(name, items, scenario, workers, use_redis, rate, latency, service, errors, elapsed,
                                      cpu, batches_before, batches, server.rss_mb(), steal))
            print(format_row(results[-1]), flush=True)
            time.sleep(0.5)
        if args.overlap and scenario == "click" and workers == 1:
            print(overlap_report(server.port, name, model_dir, args.overlap), flush=True)
    finally:
        server.stop()
        if use_redis:
            import redis

            client = redis.Redis.from_url(REDIS_URL)
            keys = list(client.scan_iter(match=prefix + "*"))
            if keys:
                client.delete(*keys)
    return results


def steal_ticks() -> tuple[int, int] | None:
    """(steal, all) CPU ticks of the whole machine so far, from /proc/stat; None where there is none."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (ticks[7], sum(ticks[:8])) if len(ticks) >= 8 else None


def steal_share(before: tuple[int, int] | None) -> float | None:
    """Percent of the machine's CPU time since `before` that the hypervisor gave to other guests: on a
    shared virtual machine the same code runs slower and with longer tails while this is high."""
    after = steal_ticks()
    if before is None or after is None or after[1] <= before[1]:
        return None
    return 100 * (after[0] - before[0]) / (after[1] - before[1])


def result_row(name, items, scenario, workers, use_redis, rate, latency, service, errors, elapsed, cpu,
               before: dict, after: dict, rss_mb: float, steal_pct: float | None = None) -> Result:
    ok = latency[~np.isnan(latency)] * 1000
    pct = np.percentile(ok, [50, 90, 99]) if len(ok) else [float("nan")] * 3
    served = service[~np.isnan(service)] * 1000
    n_batches = after.get("gru4rec_batch_size_count", 0) - before.get("gru4rec_batch_size_count", 0)
    mean_batch = mean_wait = None
    if n_batches > 0:
        mean_batch = (after["gru4rec_batch_size_sum"] - before["gru4rec_batch_size_sum"]) / n_batches
        mean_wait = (after["gru4rec_batch_wait_seconds_sum"] - before["gru4rec_batch_wait_seconds_sum"]) / n_batches * 1000
    return Result(
        model=name, n_items=len(items), scenario=scenario, workers=workers, store="redis" if use_redis else "memory",
        rate=rate, sent=len(latency), ok=len(ok), errors=errors, achieved_rps=len(ok) / elapsed,
        p50_ms=float(pct[0]), p90_ms=float(pct[1]), p99_ms=float(pct[2]),
        max_ms=float(ok.max()) if len(ok) else float("nan"),
        service_p99_ms=float(np.percentile(served, 99)) if len(served) else float("nan"),
        server_cpu_us=cpu / max(len(latency), 1) * 1e6, mean_batch=mean_batch, mean_wait_ms=mean_wait,
        server_rss_mb=rss_mb, load_avg=os.getloadavg()[0], steal_pct=steal_pct,
    )


def session_prefixes(model_dir: Path, n: int, seed: int = 3) -> list[list[str]]:
    """n random prefixes (1..len-1 clicks) of multi-click sessions of the model's training log."""
    import pandas as pd

    name = model_dir.name.removeprefix("model-")
    data = model_dir.parent / f"synth-{name}.tsv"
    if not data.exists():
        raise SystemExit(f"--overlap needs the training log {data}")
    df = pd.read_csv(data, sep="\t", dtype={"SessionId": "int64", "ItemId": "str"}, usecols=["SessionId", "ItemId"])
    starts = np.flatnonzero(np.r_[True, df["SessionId"].to_numpy()[1:] != df["SessionId"].to_numpy()[:-1]])
    lengths = np.diff(np.r_[starts, len(df)])
    rng = np.random.default_rng(seed)
    picks = rng.choice(np.flatnonzero(lengths >= 2), size=n, replace=False)
    ids = df["ItemId"].to_numpy()
    return [ids[starts[s] : starts[s] + int(rng.integers(1, lengths[s]))].tolist() for s in picks]


def overlap_report(port: int, name: str, model_dir: Path, n: int) -> str:
    """Mean share of the served top-20 in the exact top-20, and the index build time, from GET /v1/model."""
    import httpx

    base = f"http://127.0.0.1:{port}"
    retrieval = httpx.get(f"{base}/v1/model", timeout=30).json().get("retrieval") or {}
    if retrieval.get("mode") != "index":
        return f"\n{name}: exact scoring (no index), overlap is 1 by construction\n"
    shares, served_s, exact_s = [], 0.0, 0.0
    with httpx.Client(base_url=base, timeout=120) as http:
        for prefix in session_prefixes(model_dir, n):
            t0 = time.perf_counter()
            served = http.post("/v1/recommend", json={"items": prefix, "k": 20}).json()["items"]
            t1 = time.perf_counter()
            exact = http.post("/v1/recommend", json={"items": prefix, "k": 20, "exact": True}).json()["items"]
            served_s, exact_s = served_s + t1 - t0, exact_s + time.perf_counter() - t1
            shares.append(len({x["item_id"] for x in served} & {x["item_id"] for x in exact}) / max(len(exact), 1))
    index = retrieval["index"]
    return (f"\n{name}: top-20 overlap with exact scoring over {n} session prefixes: mean {np.mean(shares):.4f}, "
            f"min {np.min(shares):.2f}, share of prefixes with full overlap {np.mean(np.equal(shares, 1.0)):.3f}; "
            f"sequential latency {served_s / n * 1000:.1f} ms served vs {exact_s / n * 1000:.1f} ms exact; "
            f"index {index['lists']} cells, nprobe {index['nprobe']}, {index['candidates']} candidates, "
            f"build {index['build_s']} s ({index['source']})\n")


HEADER = ("| model | items | scenario | workers | store | target req/s | achieved req/s | p50 ms | p90 ms | p99 ms "
          "| max ms | p99 from send ms | server CPU µs/req | mean batch | batch wait ms | server RSS MB | errors | load avg | steal % |")


def format_row(r: Result) -> str:
    label = {"click": "(a) click event", "history": "(b) 10-item history"}[r.scenario]
    batch = "-" if r.mean_batch is None else f"{r.mean_batch:.2f}"
    wait = "-" if r.mean_wait_ms is None else f"{r.mean_wait_ms:.2f}"
    steal = "-" if r.steal_pct is None else f"{r.steal_pct:.1f}"
    return (f"| {r.model} | {r.n_items} | {label} | {r.workers} | {r.store} | {r.rate:.0f} | {r.achieved_rps:.0f} | "
            f"{r.p50_ms:.2f} | {r.p90_ms:.2f} | {r.p99_ms:.2f} | {r.max_ms:.1f} | {r.service_p99_ms:.2f} | "
            f"{r.server_cpu_us:.0f} | {batch} | {wait} | {r.server_rss_mb:.0f} | {r.errors} | {r.load_avg:.1f} | {steal} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["3k", "37k", "100k"], choices=["3k", "37k", "100k", "1.8m"])
    parser.add_argument("--scenarios", nargs="+", default=["click", "history"], choices=["click", "history"])
    parser.add_argument("--rates", nargs="*", type=float, default=[100, 250, 500],
                        help="requests per second (none: only start the server, e.g. for --overlap)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per rate")
    parser.add_argument("--two-workers", choices=["yes", "no", "only"], default="yes",
                        help="also run (a) with 2 workers + Redis (only: (a) with 2 workers + Redis alone)")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/gru4rec-serve-latency"))
    parser.add_argument("--prepare-only", action="store_true", help="train the models and stop")
    parser.add_argument("--server-repo", type=Path, default=REPO, help="checkout whose `gru4rec serve` to measure")
    parser.add_argument("--overlap", type=int, default=0, metavar="N",
                        help="for index-served models: top-20 overlap with exact scoring over N session prefixes")
    parser.add_argument("--rebuild-index", action="store_true",
                        help="remove cached top-k indexes first, so the server's start-up builds (and times) one")
    parser.add_argument("--start-timeout", type=float, default=600, help="seconds to wait for a server to be ready")
    parser.add_argument("--retrieval", choices=["auto", "index", "exact"], help="GRU4REC_RETRIEVAL for the server")
    parser.add_argument("--results", type=Path, help="where to write the rows as JSON (default WORK_DIR/results.json)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    models = {name: prepare_model(name, args.work_dir) for name in args.models}
    if args.prepare_only:
        return 0
    if args.rebuild_index:
        for model_dir in models.values():
            for cached in model_dir.glob("serving-index-*.faiss"):
                cached.unlink()
    if args.two_workers == "yes" and "click" in args.scenarios:
        import redis

        try:
            redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
        except redis.RedisError as exc:
            raise SystemExit(f"2-worker runs need Redis at {REDIS_URL} ({exc}); `make redis` or --two-workers no") from None
    print(f"\nopen-loop load, {args.duration:.0f} s per rate, k=20, load generator in this process; "
          f"{os.cpu_count()} CPU cores; server from {args.server_repo}\n")
    print(HEADER)
    print("|---" * (HEADER.count("|") - 1) + "|")
    results: list[Result] = []
    for name, model_dir in models.items():
        for scenario in args.scenarios:
            if not (scenario == "click" and args.two_workers == "only"):
                results += measure(args, name, model_dir, scenario, 1, use_redis=False)
            if scenario == "click" and args.two_workers in ("yes", "only"):
                results += measure(args, name, model_dir, scenario, 2, use_redis=True)
    out = args.results or args.work_dir / "results.json"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps([asdict(r) for r in results], indent=1))
    os.replace(tmp, out)
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
