"""The output rules of gru4rec.foundation.atomic: which directories a command may replace, the swap
that leaves a complete directory at every instant, and the clean-up of what killed runs left."""

from __future__ import annotations

import json
import re
import os
import threading
from pathlib import Path

import pytest

from gru4rec.foundation import atomic
from gru4rec.foundation.atomic import (
    MARKER,
    OutputKind,
    atomic_dir,
    atomic_file,
    check_output_dir,
    check_output_file,
    claim_dir,
    recover,
    scratch_dir,
)
from gru4rec.foundation.errors import UserError
from places import unwritable

KIND = OutputKind("report directory", "gru4rec report", frozenset({"report.txt", "report.json"}), "report.json")
OTHER = OutputKind("model directory", "gru4rec train", frozenset({"model.pt"}), "model.pt")


def write_report(out: Path, text: str) -> None:
    with atomic_dir(out, KIND) as tmp:
        (tmp / "report.txt").write_text(text)
        (tmp / "report.json").write_text("{}")


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


# -- which directories may be written -----------------------------------------------------------------


def test_new_empty_and_own_directories_are_accepted(tmp_path):
    check_output_dir(tmp_path / "a" / "b" / "new", KIND)  # parents are created later
    (tmp_path / "empty").mkdir()
    write_report(tmp_path / "empty", "1")
    write_report(tmp_path / "empty", "2")  # its own output, recognised by the marker
    assert (tmp_path / "empty" / "report.txt").read_text() == "2"
    assert json.loads((tmp_path / "empty" / MARKER).read_text()) == {"kind": "report directory", "written_by": "gru4rec report"}
    legacy = tmp_path / "legacy"  # written before the marker existed: recognised by its signature file
    legacy.mkdir()
    (legacy / "report.json").write_text("{}")
    write_report(legacy, "3")
    assert (legacy / "report.txt").read_text() == "3"


@pytest.mark.parametrize("case", ["foreign", "extra", "file", "other-kind", "cwd", "parent-of-cwd"])
def test_refused_before_any_work_and_left_untouched(tmp_path, monkeypatch, case):
    out = tmp_path / "out"
    expected = {
        "foreign": "is not the output of an earlier gru4rec report",
        "extra": "also holds files gru4rec report did not write (notes.txt)",
        "file": "exists and is not a directory",
        "other-kind": "holds a gru4rec model directory, not a report directory",
        "cwd": "is the current directory or one above it",
        "parent-of-cwd": "is the current directory or one above it",
    }[case]
    if case == "file":
        out.write_text("precious")
    else:
        out.mkdir()
        (out / "notes.txt").write_text("precious")
    if case == "extra":
        (out / MARKER).write_text(KIND.marker())
    if case == "other-kind":
        (out / "notes.txt").unlink()
        (out / MARKER).write_text(OTHER.marker())
    if case in ("cwd", "parent-of-cwd"):
        (out / "notes.txt").unlink()  # even an empty one: it cannot be renamed under the user's feet
        (out / "sub").mkdir()
        monkeypatch.chdir(out if case == "cwd" else out / "sub")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(UserError, match=re.escape(expected)):
        write_report(Path(".") if case == "cwd" else out, "new")
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    if case != "cwd" and case != "parent-of-cwd" and case != "other-kind":
        assert (out if case == "file" else out / "notes.txt").read_text() == "precious"


def test_a_symlinked_output_is_written_where_it_points(tmp_path):
    (tmp_path / "v1").mkdir()
    (tmp_path / "live").symlink_to("v1")
    write_report(tmp_path / "live", "x")
    assert (tmp_path / "live").is_symlink() and (tmp_path / "v1" / "report.txt").read_text() == "x"


def test_unwritable_places_are_refused_up_front(tmp_path):
    ro = unwritable(tmp_path)
    with pytest.raises(UserError, match=f"--out {ro}/out: cannot write in {ro}"):
        check_output_dir(ro / "out", KIND)
    with pytest.raises(UserError, match=f"--json {ro}/r.json: cannot write in {ro}"):
        check_output_file(ro / "r.json", "--json")
    with pytest.raises(UserError, match="is a directory"):
        check_output_file(tmp_path, "--json")
    with pytest.raises(UserError, match=r"cannot write .*: (Permission denied|Read-only)"):
        with atomic_file(ro / "r.json") as fh:
            fh.write("x")


# -- the swap -------------------------------------------------------------------------------------------


def test_the_path_always_holds_a_complete_directory_during_swaps(tmp_path):
    out = tmp_path / "out"
    write_report(out, "0" * 1000)
    seen, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            try:
                text = (out / "report.txt").read_text()
            except FileNotFoundError:
                text = None
            seen.append(text)

    watcher = threading.Thread(target=watch)
    watcher.start()
    for i in range(1, 40):
        write_report(out, str(i % 10) * 1000)
    stop.set()
    watcher.join()
    assert None not in seen and all(len(t) == 1000 and len(set(t)) == 1 for t in seen)
    assert leftovers(out) == []


def test_a_failed_write_keeps_the_previous_version(tmp_path):
    out = tmp_path / "out"
    write_report(out, "old")
    with pytest.raises(RuntimeError):
        with atomic_dir(out, KIND) as tmp:
            (tmp / "report.txt").write_text("half")
            raise RuntimeError("failed half way")
    assert (out / "report.txt").read_text() == "old" and leftovers(out) == []


def test_the_fallback_without_rename_exchange(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "exchange", lambda a, b: False)
    out = tmp_path / "out"
    write_report(out, "a")
    write_report(out, "b")
    assert (out / "report.txt").read_text() == "b" and leftovers(out) == []


def test_rename_exchange_is_used_on_linux(tmp_path):
    if not atomic.exchange(tmp_path, tmp_path):  # exchanging an entry with itself is a no-op
        pytest.skip("no rename-exchange on this system")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").touch()
    assert atomic.exchange(a, b) and (b / "x").exists() and not (a / "x").exists()


# -- leftovers of killed runs ------------------------------------------------------------------------


def test_leftovers_of_dead_runs_are_removed_live_ones_kept(tmp_path):
    out = tmp_path / "out"
    write_report(out, "current")
    dead_tmp = tmp_path / ".out.abcd1234.tmp"  # a killed run's temporary copy (its lock died with it)
    dead_tmp.mkdir()
    (dead_tmp / "big").write_bytes(b"x" * 1000)
    dead_old = tmp_path / ".out.old-4242"  # a set-aside old version of an older release's swap
    dead_old.mkdir()
    dead_file = tmp_path / ".out.zz_99_zz.tmp"
    dead_file.write_text("half a file")
    not_ours = [tmp_path / ".out.notes.tmp", tmp_path / ".out.v2.abcd1234.tmp", tmp_path / ".outx.abcd1234.tmp"]
    for path in not_ours:
        path.write_text("someone else's")
    with scratch_dir(out) as live:  # a run in progress holds its lock
        recover(out)
        assert live.exists()
        assert not dead_tmp.exists() and not dead_old.exists() and not dead_file.exists()
    assert all(p.read_text() == "someone else's" for p in not_ours)
    assert (out / "report.txt").read_text() == "current"


def test_a_swap_cut_between_two_renames_is_restored(tmp_path):
    out = tmp_path / "out"
    write_report(out, "previous")
    os.rename(out, tmp_path / ".out.old-1234")  # killed here: no `out` at all
    (tmp_path / ".out.k3j4h5g6.tmp").mkdir()  # and the new, maybe incomplete, copy
    write_report(out, "next")  # the next run puts the previous one back first, then replaces it
    assert (out / "report.txt").read_text() == "next" and leftovers(out) == []
    os.rename(out, tmp_path / ".out.old-99")
    recover(out)
    assert (out / "report.txt").read_text() == "next"


def test_atomic_file_cleans_its_own_leftovers(tmp_path):
    target = tmp_path / "r.json"
    (tmp_path / ".r.json.q1w2e3r4.tmp").write_text("killed half way")
    with atomic_file(target) as fh:
        fh.write("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_claim_dir_writes_into_a_directory_without_replacing_it(tmp_path):
    out = claim_dir(tmp_path / "t", KIND)
    (out / "mine.txt").write_text("kept")
    assert claim_dir(tmp_path / "t", KIND) == out and (out / "mine.txt").read_text() == "kept"
    foreign = tmp_path / "f"
    foreign.mkdir()
    (foreign / "x").touch()
    with pytest.raises(UserError, match="not the output of an earlier gru4rec report"):
        claim_dir(foreign, KIND)
