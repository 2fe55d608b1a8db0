"""Write files and directories so that a killed run never leaves half an output behind, and never
touch what someone else wrote.

The rules every command follows (docs/cli.md, "Outputs"):

* An output directory (`train --out`, `prepare --out`, `compare --out`) is built in a temporary
  directory `.NAME.XXXXXXXX.tmp` beside it and then swapped in. On Linux the swap is one
  renameat2(RENAME_EXCHANGE) call, so a complete directory sits at NAME at every instant, and NAME
  stays a plain directory (a service watching NAME/metadata.json, a Docker volume holding NAME and
  `cp -r` all keep working). Where the kernel or file system cannot exchange (macOS, NFS, old
  kernels), NAME is moved aside to `.NAME.old-XXXX` and the new one renamed in: a kill between those
  two renames leaves no NAME, and the next gru4rec run writing NAME renames the previous version back.
* Such a directory is only ever replaced when it is empty or recognisably ours: it carries the
  marker file `.gru4rec-output` (or, if written before the marker existed, the kind's signature file) and
  holds nothing but the files that kind writes. Anything else (a directory of the user's, a file,
  the current directory) is refused with a one-line error before any long work starts.
* Temporary files and directories are locked (flock) by the process writing them. Whatever a killed
  run left beside an output (its lock died with it) is removed by the next run writing that output.
  Two runs writing the same output at the same time are not supported: the later swap wins, and in
  the instant between creating and locking its temporary copy a run can lose it to the other's
  clean-up (it then fails with an error; the output itself is never damaged).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fnmatch
import json
import logging
import os
import platform
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from gru4rec.foundation.errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no locks, leftovers are then never in use
    fcntl = None

log = logging.getLogger(__name__)

MARKER = ".gru4rec-output"
"""File in every output directory a command writes: JSON {"kind": ..., "written_by": ...}."""

step_hook: Callable[[str], None] | None = None
"""Called with the name of each step of a write (for the kill tests, which pause a process there)."""

# errors of the place written to, reported as a one-line UserError instead of a traceback
_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG, errno.ENOTDIR}


@dataclass(frozen=True)
class OutputKind:
    """A kind of directory a command writes, so that it can tell its own outputs from anyone else's.

    `files` are the names such a directory may hold, `patterns` (shell-style) names other tools of
    the project add to it later, such as the service's cached top-k index (anything else is
    someone else's and blocks a replacement); `signature` recognises one written before the
    marker file existed.
    """

    label: str
    command: str
    files: frozenset[str]
    signature: str
    patterns: tuple[str, ...] = ()

    def holds(self, name: str) -> bool:
        """Whether a file called `name` belongs in a directory of this kind."""
        return name in self.files or name == MARKER or any(fnmatch.fnmatchcase(name, p) for p in self.patterns)

    def marker(self) -> str:
        return json.dumps({"kind": self.label, "written_by": self.command}) + "\n"


def _reached(step: str) -> None:
    if step_hook is not None:
        step_hook(step)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_permissions(directory: Path) -> None:
    """Temporary files and directories are private (0600/0700); give an output the usual umask modes."""
    umask = _umask()
    directory.chmod(0o777 & ~umask)
    for child in directory.iterdir():
        child.chmod((0o777 if child.is_dir() else 0o666) & ~umask)


# -- checks before the work -----------------------------------------------------------------------


def check_output_dir(path: str | os.PathLike[str], kind: OutputKind, option: str = "--out", *, replace: bool = True) -> Path:
    """Refuse, before any long work, an output directory this command must not write.

    Accepted: a path that does not exist yet (its parents are created), an empty directory, or a
    directory `kind` wrote. With `replace` (the directory is swapped as a whole) it must also hold
    only `kind.files`. Also finishes what a killed earlier run left beside it. Returns the path to
    write (a symlink's target: the link itself stays).
    """
    path = _target(Path(path), option)
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path}: exists and is not a directory; {option} names a directory {kind.command} writes")
    _refuse_working_directory(path, option)
    recover(path)
    if path.is_dir():
        _check_ours(path, kind, option, replace)
        if replace and os.path.ismount(path):
            raise UserError(f"{option} {path}: is a mount point, which cannot be replaced; write into a directory inside it")
    _check_writable(path.parent if replace else path, option, path)
    return path


def check_output_file(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """Refuse, before any long work, an output file that cannot be written (a directory, a read-only place)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} {path}: is a directory; give a file name")
    _check_writable(path.parent, option, path)
    recover(path)
    return path


def _target(path: Path, option: str) -> Path:
    """A symlinked output is written where the link points (the link is the user's and stays)."""
    if not path.is_symlink():
        return path
    target = path.resolve()
    if not target.exists():
        raise UserError(f"{option} {path}: is a symlink to {target}, which does not exist")
    return target


def _refuse_working_directory(path: Path, option: str) -> None:
    try:
        cwd = Path.cwd().resolve()
    except OSError:  # the working directory was removed: it cannot be the output
        return
    if cwd.is_relative_to(path.resolve()):
        raise UserError(
            f"{option} {path}: is the current directory or one above it, which gru4rec never replaces; "
            f"name a new directory, e.g. {option} out"
        )


def _marker_kind(path: Path) -> str | None:
    try:
        return str(json.loads((path / MARKER).read_text()).get("kind"))
    except (OSError, ValueError, AttributeError):
        return None


def _check_ours(path: Path, kind: OutputKind, option: str, replace: bool) -> None:
    names = {entry.name for entry in os.scandir(path)}
    if not names:
        return
    marked = _marker_kind(path)
    if marked is not None and marked != kind.label:
        raise UserError(f"{option} {path}: holds a gru4rec {marked}, not a {kind.label}; choose another {option}")
    if marked is None and kind.signature not in names:
        raise UserError(
            f"{option} {path}: exists, is not empty and is not the output of an earlier {kind.command}; "
            f"refusing to write there, choose another {option}"
        )
    foreign = sorted(name for name in names if not kind.holds(name)) if replace else []
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise UserError(
            f"{option} {path}: also holds files {kind.command} did not write ({shown}); it would replace "
            f"the directory as a whole, so move them away or choose another {option}"
        )


def _check_writable(directory: Path, option: str, path: Path) -> None:
    """Create and remove a file where the output will go (its nearest existing directory)."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{option} {path}: {existing} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name or 'out'}.", suffix=".tmp", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"{option} {path}: cannot write in {existing} ({exc.strerror or exc})") from None


# -- leftovers of killed runs -----------------------------------------------------------------------


def _leftover_patterns(name: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """Temporary copies (tempfile's 8 random characters) and set-aside old versions of `name`."""
    stem = re.escape(name)
    return re.compile(rf"\.{stem}\.[a-z0-9_]{{8}}\.tmp"), re.compile(rf"\.{stem}\.old-[A-Za-z0-9_-]+")


def _lock(path: Path | str, wait: bool = True) -> int:
    """An fd holding an exclusive lock on `path` (a file or directory) until closed or the process
    dies; without `wait`, BlockingIOError if another process holds it."""
    fd = os.open(path, os.O_RDONLY)
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError:
            os.close(fd)
            raise
    return fd


def _in_use(path: Path) -> bool:
    """True while a live process holds the lock it took when it created `path`."""
    try:
        os.close(_lock(path, wait=False))
    except BlockingIOError:
        return True
    except OSError:
        return False
    return False


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def recover(path: str | os.PathLike[str]) -> None:
    """Clean up what killed runs left beside `path`; restore the previous version if a swap was cut
    between its two renames (the fallback swap, and the releases before rename-exchange)."""
    path = Path(path)
    if not path.name or not path.parent.is_dir():
        return
    tmp_re, old_re = _leftover_patterns(path.name)
    with os.scandir(path.parent) as entries:
        names = [e.name for e in entries if e.name.startswith(f".{path.name}.")]
    for name in names:
        if tmp_re.fullmatch(name) and not _in_use(path.parent / name):
            log.info("removing %s, left by an interrupted run", path.parent / name)
            _remove(path.parent / name)
    olds = [path.parent / n for n in names if old_re.fullmatch(n) and not _in_use(path.parent / n)]
    if olds and not os.path.lexists(path):
        newest = max(olds, key=lambda p: p.stat().st_mtime_ns)
        try:
            os.rename(newest, path)
        except OSError:  # another process restored it first
            return
        olds.remove(newest)
        log.warning("restored %s from %s, which an interrupted run had moved aside", path, newest.name)
    for old in olds:
        _remove(old)


# -- writing ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _output_errors(path: Path) -> Iterator[None]:
    """A full disk, a read-only or forbidden place: one line naming the output, not a traceback."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _OUTPUT_ERRNOS:
            raise
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "w", **open_kwargs) -> Iterator:
    """Open a temporary file beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a file name")
    recover(path)
    with _output_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    lock = _lock(tmp)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        with _output_errors(path), open(tmp, mode, **open_kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        _reached("file-written")
        os.replace(tmp, path)
        _reached("file-replaced")
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    finally:
        os.close(lock)


@contextlib.contextmanager
def scratch_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A private temporary directory `.NAME.XXXXXXXX.tmp` beside `path`, removed after the block; one
    left by a killed process is removed by `recover(path)`."""
    path = Path(path)
    recover(path)
    with _output_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    lock = _lock(tmp)
    try:
        yield tmp
    finally:
        os.close(lock)
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], kind: OutputKind) -> Iterator[Path]:
    """Yield a temporary directory beside `path` that replaces `path` as a whole if the block succeeds.

    `path` must pass `check_output_dir` for `kind` (checked again just before the swap, in case
    someone put files there meanwhile). At every instant `path` is the old complete directory or
    the new one (see the module docstring for the fallback without rename-exchange).
    """
    path = check_output_dir(path, kind)
    with scratch_dir(path) as tmp:
        os.chmod(tmp, 0o777 & ~_umask())
        (tmp / MARKER).write_text(kind.marker())
        _reached("dir-created")
        with _output_errors(path):
            yield tmp
            _sync_tree(tmp)
        _reached("dir-written")
        check_output_dir(path, kind)
        _swap(tmp, path)
        _reached("swapped")  # the scratch path now holds the old version, removed on leaving


def claim_dir(path: str | os.PathLike[str], kind: OutputKind, option: str = "--out") -> Path:
    """Create (or accept) a directory a command writes files into without replacing it (tune's)."""
    path = check_output_dir(path, kind, option, replace=False)
    with _output_errors(path):
        path.mkdir(parents=True, exist_ok=True)
        if not (path / MARKER).exists():
            (path / MARKER).write_text(kind.marker())
    return path


def _sync_tree(directory: Path) -> None:
    """Flush every file (and the directory entries) to disk, so the swap never publishes empty files
    after a power cut."""
    for root, _, files in os.walk(directory):
        for name in files:
            _fsync(os.path.join(root, name))
        _fsync(root)


def _fsync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems cannot fsync a directory
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _swap(new: Path, path: Path) -> None:
    """Put `new` at `path`; an existing `path` ends up at `new`'s name (removed by the caller)."""
    if not os.path.lexists(path):
        os.rename(new, path)
    elif not exchange(new, path):
        _swap_by_two_renames(new, path)
    _fsync(path.parent)


def _swap_by_two_renames(new: Path, path: Path) -> None:
    """The fallback: old aside, new in. The old version stays locked until the new one is in place,
    so a concurrent `recover` does not mistake it for a killed run's and restore it."""
    old = path.with_name(f".{path.name}.old-{secrets.token_hex(4)}")
    lock = _lock(path)
    try:
        os.rename(path, old)
        _reached("moved-aside")
        os.rename(new, path)
        os.rename(old, new)  # the caller's clean-up removes it
    finally:
        os.close(lock)


# -- rename-exchange ---------------------------------------------------------------------------------

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_SYS_RENAMEAT2 = {"x86_64": 316, "aarch64": 276, "arm64": 276, "riscv64": 276, "ppc64le": 357, "s390x": 347}


def _renameat2() -> Callable[..., int] | None:
    """glibc's renameat2, or the raw system call where the C library lacks the wrapper (musl)."""
    if platform.system() != "Linux":
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    func = getattr(libc, "renameat2", None)
    if func is not None:
        func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        return func
    number = _SYS_RENAMEAT2.get(platform.machine())
    if number is None:
        return None
    return lambda *args: libc.syscall(ctypes.c_long(number), *args)


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap the entries `a` and `b` (Linux renameat2 RENAME_EXCHANGE); False where the
    system or file system cannot, so the caller falls back."""
    func = _renameat2()
    if func is None:
        return False
    rc = func(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), ctypes.c_uint(_RENAME_EXCHANGE))
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        log.debug("rename-exchange unsupported here (%s): two renames", os.strerror(err))
        return False
    raise OSError(err, os.strerror(err), str(b))
