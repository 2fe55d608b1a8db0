"""A process that imports gru4rec once, then forks one real `gru4rec` process per request, so the kill
tests can SIGKILL many runs without paying torch's import each time.

Protocol (JSON lines): the test writes {"argv": [...], "cwd": DIR, "pause_at": N, "no_exchange": bool}
on stdin. The zygote forks a child that runs `gru4rec.cli.main(argv)` and answers
  {"started": PID}                 at once;
  {"step": NAME, "n": K}           at each step of an atomic write (gru4rec.foundation.atomic.step_hook);
  {"paused": NAME, "pid": PID}     at step number pause_at, where the child then sleeps until killed;
  {"exit": RC}                     if it finishes;
and, once the child is gone (finished or killed), the zygote answers {"done": PID, "signal": SIG or null}.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

import data_prep.prepare  # noqa: F401  (imported once here, not in every child)
import gru4rec.training.run  # noqa: F401
from gru4rec.cli import main
from gru4rec.foundation import atomic


def _say(message: dict) -> None:
    os.write(1, (json.dumps(message) + "\n").encode())


def _child(request: dict) -> None:
    count = 0

    def hook(step: str) -> None:
        nonlocal count
        count += 1
        _say({"step": step, "n": count})
        if count == request.get("pause_at"):
            _say({"paused": step, "pid": os.getpid()})
            time.sleep(3600)

    atomic.step_hook = hook
    if request.get("no_exchange"):
        atomic.exchange = lambda a, b: False
    os.chdir(request["cwd"])
    try:
        rc = main(request["argv"])
    except BaseException as exc:  # a bug: report it rather than hang the test
        _say({"error": repr(exc)})
        rc = 1
    sys.stdout.flush()
    _say({"exit": rc})
    os._exit(rc)


def warm_up() -> None:
    """One tiny run of each command here, so every child starts with what a first run loads lazily
    (seconds on a busy machine). One torch thread: no thread pool exists when the zygote forks."""
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "log.tsv"
        rows = [f"s{s}\titem{(s + k) % 10}\t{1e9 + 86_400 * s / 20 + k}" for s in range(60) for k in range(3)]
        log.write_text("SessionId\tItemId\tTime\n" + "\n".join(rows) + "\n")
        assert main(["prepare", str(log), "--min-item-support", "1", "--out", f"{tmp}/p", "-q"]) == 0
        assert main(["train", f"{tmp}/p/train_full.tsv", "--set", "layers=[4]", "--set", "n_epochs=1",
                     "--set", "sample_cache_size=100", "--set", "n_sample=4", "--out", f"{tmp}/m", "-q"]) == 0


def serve() -> None:
    torch.set_num_threads(1)
    with contextlib.redirect_stdout(sys.stderr):
        warm_up()
    _say({"ready": os.getpid()})
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request)
        _say({"started": pid})
        _, status = os.waitpid(pid, 0)
        _say({"done": pid, "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None})


if __name__ == "__main__":
    serve()
