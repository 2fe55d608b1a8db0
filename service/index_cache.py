"""Where built top-k indexes are kept, so restarts and extra workers load one instead of building it.

An index is cached beside its model, as MODEL_DIR/serving-index-KEY.faiss. KEY hashes the item
vectors, the build parameters and the faiss version, so a file can never be used for other weights:
a model directory replaced by a new one simply has no matching file yet. Model directories may be
read-only (a container's `:ro` mount); the index then goes to a cache directory
(GRU4REC_INDEX_CACHE_DIR, by default ~/.cache/gru4rec/indexes), which keeps the few most recently
used indexes. If neither can be written the index lives in memory only, and each process builds
its own. A lock file in the cache directory makes a second process that wants the same index wait
for the first one's build and load its result.

Files are written whole (temporary name, fsync, rename), through a descriptor of the model
directory opened when the model was loaded, so an index always lands beside the weights it was
built from even if the directory is swapped meanwhile.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from gru4rec.model.checkpoint import SERVING_INDEX_PREFIX, SERVING_INDEX_SUFFIX
from service.retrieval import FORMAT, IndexParams, MipsIndex

log = logging.getLogger(__name__)

PREFIX = SERVING_INDEX_PREFIX  # the model directory's rules (gru4rec.model.checkpoint) know these names
SUFFIX = SERVING_INDEX_SUFFIX
KEEP_IN_CACHE_DIR = 4
_TMP = re.compile(r"^\.serving-index-[0-9a-f]+\.(\d+)\.tmp$")


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gru4rec" / "indexes"


def cache_key(weights: np.ndarray, bias: np.ndarray, params: IndexParams) -> str:
    """Identity of an index: the exact item vectors, the build parameters and the faiss version."""
    import faiss

    digest = hashlib.blake2b(digest_size=12)
    digest.update(f"{FORMAT}|{faiss.__version__}|{params.n_lists}|{weights.shape}|".encode())
    digest.update(memoryview(np.ascontiguousarray(weights, dtype=np.float32)).cast("B"))
    digest.update(memoryview(np.ascontiguousarray(bias, dtype=np.float32)).cast("B"))
    return digest.hexdigest()


class IndexCache:
    """Finds, builds and stores indexes for one model directory (given as an open descriptor)."""

    def __init__(self, cache_dir: Path | None) -> None:
        self.cache_dir = cache_dir if cache_dir is not None else default_cache_dir()

    def get(
        self, model_dir_fd: int | None, key: str, build: Callable[[], MipsIndex], load: Callable[[np.ndarray, str], MipsIndex]
    ) -> MipsIndex:
        name = f"{PREFIX}{key}{SUFFIX}"
        found = self._find(model_dir_fd, name, load)
        if found is not None:
            return found
        with self._lock(key):
            found = self._find(model_dir_fd, name, load)  # another process may have built it meanwhile
            if found is not None:
                return found
            index = build()
            self._store(model_dir_fd, name, index)
            return index

    # -- reading ---------------------------------------------------------------------------------
    def _places(self, model_dir_fd: int | None) -> Iterator[tuple[str, int | None, str]]:
        """(label, directory descriptor, or None with a path prefix) in the order to look."""
        if model_dir_fd is not None:
            yield "model directory", model_dir_fd, ""
        yield str(self.cache_dir), None, str(self.cache_dir) + os.sep

    def _find(self, model_dir_fd: int | None, name: str, load: Callable[[np.ndarray, str], MipsIndex]) -> MipsIndex | None:
        for label, dir_fd, prefix in self._places(model_dir_fd):
            try:
                fd = os.open(prefix + name, os.O_RDONLY, dir_fd=dir_fd)
            except OSError:
                continue
            try:
                with os.fdopen(fd, "rb") as f:
                    data = np.fromfile(f, dtype=np.uint8)
                index = load(data, f"{label}/{name}" if dir_fd is not None else prefix + name)
            except (OSError, ValueError) as exc:
                log.warning("ignoring the cached index %s in %s: %s", name, label, exc)
                continue
            if dir_fd is None:
                with contextlib.suppress(OSError):
                    os.utime(prefix + name)  # recently used: kept by the pruning
            log.info("loaded the top-k index from %s (%s)", label, name)
            return index
        return None

    # -- writing ---------------------------------------------------------------------------------
    def _store(self, model_dir_fd: int | None, name: str, index: MipsIndex) -> None:
        data = index.serialize()
        if model_dir_fd is not None:
            try:
                _write(model_dir_fd, name, data)
                _remove_others(model_dir_fd, name)
                index.source = f"built; cached in the model directory as {name}"
                return
            except OSError as exc:
                log.info("model directory not writable (%s); caching the index in %s", exc.strerror, self.cache_dir)
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            dir_fd = os.open(self.cache_dir, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            log.warning("cannot cache the top-k index (%s: %s); every process builds its own", self.cache_dir, exc.strerror)
            return
        try:
            _write(dir_fd, name, data)
            index.source = f"built; cached in {self.cache_dir / name}"
            self._prune()
        except OSError as exc:
            log.warning("cannot cache the top-k index in %s (%s); every process builds its own", self.cache_dir, exc.strerror)
        finally:
            os.close(dir_fd)

    def _prune(self) -> None:
        """Keep the most recently used indexes in the cache directory (each may be hundreds of MB)."""
        files = sorted(self.cache_dir.glob(f"{PREFIX}*{SUFFIX}"), key=_mtime, reverse=True)
        for old in files[KEEP_IN_CACHE_DIR:]:
            with contextlib.suppress(OSError):
                old.unlink()
                log.info("removed the least recently used cached index %s", old)

    @contextlib.contextmanager
    def _lock(self, key: str) -> Iterator[None]:
        """Exclusive per-key lock across processes; no lock (just build) where none can be made."""
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.cache_dir / f".{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _write(dir_fd: int, name: str, data: np.ndarray) -> None:
    """Write `name` in the directory whole: a temporary file, fsync, then an atomic rename."""
    _remove_stale_temporaries(dir_fd)
    tmp = f".{name[: -len(SUFFIX)]}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as f:
            data.tofile(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def _remove_stale_temporaries(dir_fd: int) -> None:
    """Temporary files of index writes whose process is gone (killed mid-write)."""
    for entry in os.listdir(dir_fd):
        match = _TMP.match(entry)
        if match and not _alive(int(match.group(1))):
            with contextlib.suppress(OSError):
                os.unlink(entry, dir_fd=dir_fd)


def _remove_others(dir_fd: int, keep: str) -> None:
    """Indexes this service wrote for earlier weights or parameters (recognised by their name)."""
    for entry in os.listdir(dir_fd):
        if entry.startswith(PREFIX) and entry.endswith(SUFFIX) and entry != keep:
            with contextlib.suppress(OSError):
                os.unlink(entry, dir_fd=dir_fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True

