"""Kill `gru4rec train` and `gru4rec prepare` with SIGKILL at every step of writing their output
(including between the steps of the directory swap) and at arbitrary moments: after each kill the
output directory holds the previous complete version (or the new complete one), it loads, and the
next run removes what the killed one left beside it.

Real processes and real SIGKILL: tests/foundation/kill_zygote.py imports gru4rec once and forks one
process per run; a hook in gru4rec.foundation.atomic pauses a run at step N so the kill lands there.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from gru4rec.foundation.atomic import MARKER, recover
from gru4rec.model.checkpoint import load_checkpoint, read_metadata
from gru4rec.foundation.errors import ModelUnavailable

REPO = Path(__file__).resolve().parents[2]
ZYGOTE = Path(__file__).with_name("kill_zygote.py")
SPLITS = ("train_full", "test", "train_tr", "train_valid")


class Zygote:
    """The forking process and its answers."""

    def __init__(self, log: Path) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
        self.proc = subprocess.Popen(
            [sys.executable, str(ZYGOTE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=log.open("wb"), env=env, bufsize=0,
        )
        self.buffer = b""
        assert "ready" in self.read(120)

    def read(self, timeout: float = 60, expire: bool = False) -> dict | None:
        """The next answer; None after `timeout` seconds if `expire`, else that is a failure."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready and expire:
                return None
            chunk = os.read(self.proc.stdout.fileno(), 65536) if ready else b""
            if not chunk:
                raise AssertionError(f"no answer from the zygote within {timeout} s (exit code {self.proc.poll()})")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        try:
            return json.loads(line)
        except ValueError:
            return {"output": line.decode(errors="replace")}  # what the command printed

    def run(self, argv: list[str], cwd: Path, pause_at: int | None = None, kill_after: float | None = None,
            no_exchange: bool = False) -> dict:
        """Run one command; kill it at step `pause_at` or `kill_after` seconds after it started."""
        request = {"argv": argv, "cwd": str(cwd), "pause_at": pause_at, "no_exchange": no_exchange}
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        result: dict = {"steps": []}
        started_at = None
        while True:
            timing = kill_after is not None and started_at is not None and "killed" not in result
            msg = self.read(max(0.0, started_at + kill_after - time.monotonic()), expire=True) if timing else self.read()
            if msg is None:  # the moment to kill
                _kill(result["pid"])
                result["killed"] = True
            elif "started" in msg:
                started_at, result["pid"] = time.monotonic(), msg["started"]
            elif "step" in msg:
                result["steps"].append(msg["step"])
            elif "paused" in msg:
                result["paused"] = msg["paused"]
                _kill(msg["pid"])
            elif "exit" in msg or "error" in msg:
                result.update(msg)
            elif "done" in msg:
                result["signal"] = msg["signal"]
                return result

    def close(self) -> None:
        self.proc.kill()  # no child is running between tests; skip torch's slow interpreter shutdown
        self.proc.wait(30)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:  # it finished just before
        pass


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    z = Zygote(tmp_path_factory.mktemp("zygote") / "stderr.log")
    yield z
    z.close()


def leftovers(out: Path) -> set[str]:
    return {p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")}


def write_log(path: Path, n_sessions: int, seed: int) -> Path:
    """Sessions that walk a cycle of 30 items (learnable), one session every 10 minutes."""
    lines, t = ["SessionId\tItemId\tTime"], 1_396_310_400.0
    for s in range(n_sessions):
        start = (s * 7 + seed) % 30
        for k in range(3 + s % 5):
            lines.append(f"s{s}\titem{(start + k) % 30}\t{t + 5 * k}")
        t += 600
    path.write_text("\n".join(lines) + "\n")
    return path


# -- train ---------------------------------------------------------------------------------------------

TRAIN = ["--set", "layers=[8]", "--set", "batch_size=8", "--set", "n_sample=8", "--set", "sample_cache_size=2000",
         "--set", "n_epochs=2", "--device", "cpu", "-q"]


def check_model(out: Path, versions: set[str]) -> str:
    """The directory is a complete, loadable model written by one of the runs so far."""
    checkpoint = load_checkpoint(out)
    assert checkpoint.version in versions, (checkpoint.version, versions)
    assert (out / MARKER).exists()
    return checkpoint.version


def test_killing_train_at_every_step_keeps_a_complete_model(zygote, tmp_path):
    train = write_log(tmp_path / "train.tsv", 150, 0)
    out = tmp_path / "model"
    argv = ["train", str(train), "--out", str(out), *TRAIN]
    first = zygote.run(argv + ["--seed", "1"], tmp_path)
    assert first.get("exit") == 0, first
    n_steps = len(first["steps"])
    assert first["steps"] == ["dir-created", "dir-written", "swapped"] * 2
    versions = {read_metadata(out)["model_version"]}
    previous: set[str] = set()
    plan = [dict(pause_at=k) for k in range(1, n_steps + 1)] + [dict(kill_after=t) for t in (0.05, 0.4)]
    for i, kill in enumerate(plan):
        result = zygote.run(argv + ["--seed", str(i + 2)], tmp_path, **kill)
        assert result.get("signal") == signal.SIGKILL or result.get("exit") == 0, (kill, result)
        versions.add(read_metadata(out)["model_version"])  # whatever is there now must be complete:
        check_model(out, versions)
        left = leftovers(out)
        if result["steps"]:  # the run got as far as writing: it removed what the run before left
            assert not (previous & left), (kill, previous & left)
        assert len(left) <= 1, left  # never more than what one killed run leaves
        previous = left
    final = zygote.run(argv + ["--seed", "99"], tmp_path)
    assert final.get("exit") == 0, final
    check_model(out, versions | {read_metadata(out)["model_version"]})
    assert leftovers(out) == set()


def test_killed_between_the_two_renames_of_the_fallback_swap(zygote, tmp_path):
    """Without rename-exchange (macOS, NFS) a swap is two renames: a kill between them leaves no
    directory for a moment; readers are told where the previous version is and the next run puts it back."""
    train = write_log(tmp_path / "train.tsv", 150, 0)
    out = tmp_path / "model"
    argv = ["train", str(train), "--out", str(out), *TRAIN]
    assert zygote.run(argv, tmp_path, no_exchange=True).get("exit") == 0
    version = read_metadata(out)["model_version"]
    result = zygote.run(argv, tmp_path, no_exchange=True, pause_at=3)
    assert result["paused"] == "moved-aside" and result["signal"] == signal.SIGKILL
    assert not out.exists()
    with pytest.raises(ModelUnavailable, match=r"interrupted write left the previous version at .*\.model\.old-"):
        read_metadata(out)
    assert zygote.run(argv + ["--set", "n_epochs=1"], tmp_path, no_exchange=True, pause_at=1)["paused"] == "dir-created"
    assert read_metadata(out)["model_version"] == version  # the next run restored it before writing
    load_checkpoint(out)
    recover(out)
    assert leftovers(out) == set()


# -- prepare -------------------------------------------------------------------------------------------


def check_prepared(out: Path, versions: dict[str, int]) -> None:
    """Every split file is there and agrees with stats.json of the same run."""
    stats = json.loads((out / "stats.json").read_text())
    assert stats["input"]["path"] in versions
    for name in SPLITS:
        frame = pd.read_csv(out / f"{name}.tsv", sep="\t", dtype=str)
        assert len(frame) == stats["splits"][name]["events"], name


def test_killing_prepare_at_every_step_keeps_a_complete_output(zygote, tmp_path):
    logs = [write_log(tmp_path / f"log{i}.tsv", 300 + 40 * i, i) for i in range(3)]
    out = tmp_path / "data"
    argv = lambda log: ["prepare", str(log), "--min-item-support", "1", "--test-days", "0.2", "--out", str(out), "-q"]  # noqa: E731
    first = zygote.run(argv(logs[0]), tmp_path)
    assert first.get("exit") == 0, first
    n_steps = len(first["steps"])
    assert n_steps >= 10 and first["steps"][-1] == "swapped", first["steps"]
    versions = {str(log): 0 for log in logs}
    previous: set[str] = set()
    plan = [dict(pause_at=k) for k in range(1, n_steps + 1)] + [dict(kill_after=t) for t in (0.05, 0.2, 0.5)]
    for i, kill in enumerate(plan):
        result = zygote.run(argv(logs[1 + i % 2]), tmp_path, **kill)
        assert result.get("signal") == signal.SIGKILL or result.get("exit") == 0, (kill, result)
        check_prepared(out, versions)
        left = leftovers(out)
        if result["steps"]:
            assert not (previous & left), (kill, previous & left)
        assert len(left) <= 1, left
        previous = left
    assert zygote.run(argv(logs[0]), tmp_path).get("exit") == 0
    check_prepared(out, versions)
    assert leftovers(out) == set()
