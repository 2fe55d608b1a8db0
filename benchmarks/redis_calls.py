"""CPU per Redis script call: the session store's connection (service.redis_channel) against
redis-py's asyncio client (what the store used before), on the same Redis and the same script.

Each client calls `EVALSHA` of a script that returns a 600-byte string (about a session record), from
1 or 4 concurrent callers, N times; the figure is this process's CPU time per call (what the call
costs a server worker), and the wall time per call. Alternated rounds, since a shared machine's
speed drifts. Needs a redis-server (`make redis`); uses keys under `gru4rec-bench:` in database 14.

    .venv/bin/python benchmarks/redis_calls.py                   # 4,000 calls per measurement, 3 rounds
    .venv/bin/python benchmarks/redis_calls.py --calls 10000 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SCRIPT = "return {1, redis.call('GET', KEYS[1])}"
KEY = "gru4rec-bench:record"


async def measure(call, n: int, callers: int) -> tuple[float, float]:
    """CPU and wall µs per call of `call()` made n times by `callers` concurrent callers."""

    async def caller(m: int) -> None:
        for _ in range(m):
            await call()

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller(n // callers) for _ in range(callers)))
    return 1e6 * (time.process_time() - cpu) / n, 1e6 * (time.perf_counter() - wall) / n


async def main(args: argparse.Namespace) -> None:
    import redis.asyncio

    from service.redis_channel import RedisChannel

    client = redis.asyncio.Redis.from_url(args.url, socket_timeout=5, socket_connect_timeout=5, health_check_interval=30)
    await client.set(KEY, os.urandom(600))
    script = client.register_script(SCRIPT)
    channel = RedisChannel(args.url)
    sha = script.sha
    await script(keys=[KEY, "gru4rec-bench:other"], args=[b"x" * 12, 1, 2])  # loads it
    clients = {
        "redis-py": lambda: script(keys=[KEY, "gru4rec-bench:other"], args=[b"x" * 12, 1, 2]),
        "channel": lambda: channel.call("EVALSHA", sha, 2, KEY, "gru4rec-bench:other", b"x" * 12, 1, 2),
    }
    for name, call in clients.items():  # warm both up
        assert (await call())[0] == 1, name
    print(f"{args.calls} calls per measurement; µs per call, CPU / wall")
    print("| round | callers | " + " | ".join(clients) + " |")
    print("|---|---|" + "---|" * len(clients))
    for r in range(args.rounds):
        for callers in (1, 4):
            cells = []
            for call in clients.values():
                cpu, wall = await measure(call, args.calls, callers)
                cells.append(f"{cpu:.0f} / {wall:.0f}")
            print(f"| {r + 1} | {callers} | " + " | ".join(cells) + " |")
    await client.delete(KEY)
    await client.aclose()
    await channel.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("GRU4REC_BENCH_REDIS_URL", "redis://localhost:6379/14"))
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    try:
        import uvloop  # what uvicorn runs the service on

        run = uvloop.run
    except ImportError:
        run = asyncio.run
    run(main(options))
