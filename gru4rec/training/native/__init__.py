"""Compiled CPU kernels for the fused training step (and the service's session steps and exact
scores), built on first use with the system C compiler.

A GRU4Rec mini-batch on a CPU is a few hundred microseconds of arithmetic spread over ~100 small
tensor ops, so per-op overhead and repeated passes over memory dominate. kernels.c does the
element-wise parts of a step (GRU gates forward and backward, the cross-entropy and BPR-max losses
with their gradients scattered to item rows, distinct rows, the Adagrad row update) in one pass
each. The matrix products are PyTorch's (MKL / oneDNN), which on AVX2 processors run them two to
three times faster than the kernels' blocked product; the output layer's products and the GRU
layers' each use that blocked product where it is the faster one (timed on the part's first
product: on AMD processors with AVX-512, MKL takes its AVX2 path and runs them at less than half
the blocked product's speed; GRU4REC_NATIVE_MM=1 or 0 forces the choice). It is plain C with no
Python or PyTorch headers, so compiling it takes well under a second (torch.compile needs over a
minute for a single GRU gate function on the same machine, and was no faster); the shared library is
cached per source, compiler and CPU in `$GRU4REC_CACHE_DIR` (default `~/.cache/gru4rec`) and called
through ctypes.

The service uses three more: GRUSteps (a batch of sessions' GRU steps, one call per layer, each
session computed on its own), ScoreTable (the exact top-k of every item from an 8-bit screen and
exact refinement) and score_items (exact scores of an index's candidates).

The portable PyTorch code (fused.TorchOps, optim.AdagradMomentum, GRU4Rec.step_packed) stays the
specification and the fallback: without a C compiler, on other devices, or with GRU4REC_NATIVE=0, it
is used instead (logged once). The tests hold the two to the same results.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from gru4rec.training.losses import EPS, OutputLoss

if TYPE_CHECKING:
    from gru4rec.model.network import GRU4Rec
    from gru4rec.training.optim import AdagradMomentum

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels.c")
# -fopenmp-simd honours the `omp simd` pragmas (vectorised reductions) without an OpenMP runtime;
# -fno-trapping-math (as PyTorch itself is built) lets the branch-free exp/sigmoid/tanh vectorise;
# no -ffast-math, which could switch the whole process to flush-to-zero when the library loads.
BASE_FLAGS = ["-O3", "-fPIC", "-shared", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math"]
TUNING_FLAGS = [["-march=native"], []]  # the first that compiles is used

_P = ctypes.c_void_p
_I = ctypes.c_int64
_F = ctypes.c_float
_SIGNATURES = {
    "g4r_distinct": (_I, [_P, _I, _I, _P, _I, _P, _P, _P, _P, _P, _I, _P, _P]),
    "g4r_gru_forward": (None, [_P, _P, _P, _P, _I, _I, _P, _P, _P]),
    "g4r_work_floats": (_I, [_I, _I, _I]),
    "g4r_xe_grad": (ctypes.c_double, [_P, _P, _P, _P, _I, _I, _I, _F, _F, _F, _P, _I, _P, _P]),
    "g4r_bprmax_grad": (ctypes.c_double, [_P, _P, _P, _I, _I, _I, _F, _F, _F, _F, _P, _I, _P, _P]),
    "g4r_gru_backward": (None, [_P, _P, _P, _P, _P, _P, _I, _I, _P, _P, _P, _P]),
    "g4r_adagrad_rows": (_I, [_P, _P, _P, _I, _P, _P, _I, _I, _F, _F, _F]),
    "g4r_output_rows_update": (_I, [_P, _P, _P, _P, _P, _P, _I, _I, _P, _I, _P, _P, _P, _P, _P, _I, _F, _F, _F]),
    "g4r_alias_table": (None, [_P, _I, _P, _P, _P, _P]),
    "g4r_score_panel": (_I, []),
    "g4r_score_vnni": (_I, []),
    "g4r_screen": (None, [_P, _P, _P, _P, _I, _I, _I, _P, _P]),
    "g4r_refine": (_I, [_P, _P, _P, _P, _F, _F, _F, _P, _P, _P, _I, _I, _I, _I, _P, _P, _P, _P, _P]),
    "g4r_mm": (_I, [_I, _I, _I, _P, _I, _I, _P, _I, _I, _P, _I, _I]),
    "g4r_score_items": (_I, [_P, _P, _I, _P, _I, _I, _P, _I, _P, _P, _P]),
    "g4r_gru_rows": (_I, [_P, _I, _P, _I, _I, _P, _P, _P, _P, _I, _P, _I, _I, _P, _I, _I, _P]),
    "g4r_onehot_rows": (_I, [_P, _P, _I, _P, _P, _P, _I, _P, _I, _I, _P, _I, _I, _P]),
}


def cache_dir() -> Path:
    if "GRU4REC_CACHE_DIR" in os.environ:
        return Path(os.environ["GRU4REC_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gru4rec"


def _cpu_signature() -> str:
    """What -march=native depends on, so a cache shared between different machines stays correct."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor()


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _build(compiler: str, out_dir: Path) -> Path | None:
    source = SOURCE.read_bytes()
    errors = []
    for tuning in TUNING_FLAGS:
        flags = BASE_FLAGS + tuning
        key = hashlib.sha256(b"\0".join([source, compiler.encode(), " ".join(flags).encode(),
                                         _cpu_signature().encode(), platform.machine().encode()])).hexdigest()[:16]
        target = out_dir / f"kernels-{key}.so"
        if target.exists():
            return target
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".kernels-", suffix=".so", dir=out_dir)
        os.close(fd)
        try:
            command = [compiler, *flags, "-o", tmp, str(SOURCE), "-lm"]
            done = subprocess.run(command, capture_output=True, text=True, timeout=120)
            if done.returncode == 0:
                os.replace(tmp, target)  # atomic: concurrent builders each install a complete file
                return target
            errors.append(done.stderr.strip().splitlines()[-1:] or ["(no message)"])
        except (OSError, subprocess.TimeoutExpired) as exc:
            errors.append([str(exc)])
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    log.warning("could not compile the native kernels (%s); training steps and exact scores use PyTorch ops instead", errors[-1][0])
    return None


@cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None (logged once) when they cannot be had here."""
    if os.environ.get("GRU4REC_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        log.info("GRU4REC_NATIVE=0: training steps and exact scores use PyTorch ops")
        return None
    compiler = _compiler()
    if compiler is None:
        log.warning("no C compiler found (set CC); training steps and exact scores use the slower PyTorch ops")
        return None
    try:
        path = _build(compiler, cache_dir())
    except OSError as exc:  # unwritable cache directory
        log.warning("could not build the native kernels in %s (%s); training steps and exact scores use PyTorch ops", cache_dir(), exc)
        return None
    if path is None:
        return None
    lib = ctypes.CDLL(str(path))
    for name, (restype, argtypes) in _SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def usable(*tensors: Tensor) -> bool:
    """Whether the kernels apply: compiled here, and every tensor a dense float32/int64 CPU tensor."""
    return all(t.is_cpu and t.dtype in (torch.float32, torch.int64) and t.is_contiguous() for t in tensors) and (
        library() is not None
    )


def _ptr(t: Tensor | None, dtype: torch.dtype = torch.float32) -> int | None:
    """Raw pointer to t's data, refusing anything the C code would misread."""
    if t is None:
        return None
    if t.dtype != dtype or not t.is_cpu or not t.is_contiguous():
        raise ValueError(f"native kernel argument must be a contiguous {dtype} CPU tensor, got {t.dtype} "
                         f"{tuple(t.shape)}")
    return t.data_ptr()


_LONG = torch.int64


class NativeOps:
    """The element-wise parts of the fused step, with the same signatures as fused.TorchOps."""

    def __init__(self, n_items: int) -> None:
        lib = library()
        if lib is None:
            raise RuntimeError("the native kernels are not available")
        self.lib = lib
        self.slot = torch.full((n_items,), -1, dtype=_LONG)
        self.work = torch.empty(0)  # the loss kernels' scratch, kept from step to step
        self.output_mm = ProductChoice("output layer")  # its three products
        self.gru_mm = ProductChoice("GRU layers")  # their five products

    def _scratch(self, bprmax: bool, B: int, C: int) -> Tensor:
        need = self.lib.g4r_work_floats(int(bprmax), B, C)
        if self.work.numel() < need:
            self.work = torch.empty(need)
        return self.work

    def distinct(
        self, ids: Tensor, first_late: int, W: Tensor | None = None, b: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None]:
        """fused.TorchOps.distinct: with W and b, their distinct rows are copied in the same pass."""
        n = len(ids)
        rows, inverse = torch.empty(n, dtype=_LONG), torch.empty(n, dtype=_LONG)
        late = torch.empty(n, dtype=torch.uint8)
        W_rows = b_rows = None
        D = 0
        if W is not None and b is not None:
            if W.shape[0] != len(self.slot) or b.numel() != len(self.slot):
                raise ValueError(f"tables of {tuple(W.shape)} and {tuple(b.shape)} for {len(self.slot)} items")
            D = W.shape[1]
            W_rows, b_rows = torch.empty(n, D), torch.empty(n)
        m = self.lib.g4r_distinct(_ptr(ids, _LONG), n, first_late, _ptr(self.slot, _LONG), len(self.slot),
                                  rows.data_ptr(), inverse.data_ptr(), late.data_ptr(), _ptr(W), _ptr(b), D,
                                  _ptr(W_rows), _ptr(b_rows))
        if m < 0:
            raise IndexError(f"item index out of range [0, {len(self.slot)})")
        if W_rows is not None and b_rows is not None:
            W_rows, b_rows = W_rows[:m], b_rows[:m]
        return rows[:m], inverse, late[:m].bool(), W_rows, b_rows

    def gru_forward(self, gi: Tensor, gh: Tensor, h: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        B, H = h.shape
        rz, n, out = torch.empty(B, 2 * H), torch.empty(B, H), torch.empty(B, H)
        self.lib.g4r_gru_forward(_ptr(gi), _ptr(gh), _ptr(h), _ptr(mask), B, H, rz.data_ptr(), n.data_ptr(),
                                 out.data_ptr())
        return rz, n, out

    def output_grad(
        self, loss: OutputLoss, x: Tensor, W_rows: Tensor, b_rows: Tensor, col_of: Tensor, log_q: Tensor | None,
        scale: float,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
        """fused.TorchOps.output_grad for cross-entropy and BPR-max (None for the other losses).

        The three products are PyTorch's; the kernel does everything between them in one pass.
        """
        if loss.name not in ("cross-entropy", "bpr-max"):
            return None
        B, R, C = len(x), len(W_rows), len(col_of)
        OT = self.output_mm(W_rows, x.t())  # R x B: the scores of the distinct rows, transposed
        dOT, db_rows = torch.empty(R, B), torch.empty(R)
        work = self._scratch(loss.name == "bpr-max", B, C)
        if loss.name == "cross-entropy":
            q = log_q if loss.logq > 0 else None
            value = self.lib.g4r_xe_grad(_ptr(OT), _ptr(b_rows), _ptr(col_of, _LONG), _ptr(q), B, R, C, loss.logq,
                                         scale, EPS, work.data_ptr(), work.numel(), dOT.data_ptr(), db_rows.data_ptr())
        else:
            value = self.lib.g4r_bprmax_grad(_ptr(OT), _ptr(b_rows), _ptr(col_of, _LONG), B, R, C, loss.elu_param,
                                             loss.bpreg, scale, EPS, work.data_ptr(), work.numel(), dOT.data_ptr(),
                                             db_rows.data_ptr())
        if value == -math.inf:
            raise IndexError(f"output layer: {C} columns for {B} rows, or a column's row outside [0, {R})")
        return torch.tensor(value, dtype=torch.float32), self.output_mm(dOT.t(), W_rows), self.output_mm(dOT, x), db_rows

    def gru_backward(
        self, dx: Tensor, mask: Tensor | None, h: Tensor, rz: Tensor, n: Tensor, gh: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        B, H = h.shape
        dgi, dgh, dbi, dbh = torch.empty(B, 3 * H), torch.empty(B, 3 * H), torch.empty(3 * H), torch.empty(3 * H)
        self.lib.g4r_gru_backward(_ptr(dx), _ptr(mask), _ptr(h), _ptr(rz), _ptr(n), _ptr(gh), B, H,
                                  dgi.data_ptr(), dgh.data_ptr(), dbi.data_ptr(), dbh.data_ptr())
        return dgi, dgh, dbi, dbh


_ROW_ZERO = torch.zeros(1, dtype=_LONG)


def matmul(A: Tensor, B: Tensor) -> Tensor:
    """A @ B by the kernels' blocked product; A and B may be transposed views (read in place)."""
    lib = library()
    if lib is None:
        raise RuntimeError("the native kernels are not available")
    (M, K), (K2, N) = A.shape, B.shape
    if K != K2 or A.dtype != torch.float32 or B.dtype != torch.float32 or not (A.is_cpu and B.is_cpu):
        raise ValueError(f"matmul: {A.dtype} {tuple(A.shape)} @ {B.dtype} {tuple(B.shape)} is not a float32 CPU product")
    C = torch.empty(M, N)
    if lib.g4r_mm(M, N, K, A.data_ptr(), *A.stride(), B.data_ptr(), *B.stride(), C.data_ptr(), N, 1) != 0:
        raise MemoryError("matmul: no memory for a panel of B")
    return C


MM_MARGIN = 1.25  # the blocked product is chosen only when this much faster (a near tie keeps PyTorch's)


class ProductChoice:
    """The products of one part of the step: torch.mm or the blocked `matmul`, whichever computes
    this part's first product faster here (kept from then on; GRU4REC_NATIVE_MM=1 or 0 forces it)."""

    def __init__(self, part: str) -> None:
        self.part = part
        self.fn: Callable[[Tensor, Tensor], Tensor] | None = None

    def __call__(self, A: Tensor, B: Tensor) -> Tensor:
        return self._chosen(A, B)(A, B)

    def add(self, bias: Tensor, A: Tensor, B: Tensor) -> Tensor:
        """bias + A @ B (torch.addmm's rounding when PyTorch's product is the chosen one)."""
        fn = self._chosen(A, B)
        return torch.addmm(bias, A, B) if fn is torch.mm else fn(A, B).add_(bias)

    def _chosen(self, A: Tensor, B: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
        if self.fn is None:
            self.fn = _choose_mm(A, B, self.part)
        return self.fn


def _choose_mm(A: Tensor, B: Tensor, part: str) -> Callable[[Tensor, Tensor], Tensor]:
    """torch.mm or matmul, whichever computes A @ B faster here (GRU4REC_NATIVE_MM=1/0 forces it).

    The two round differently, so the choice is timed once per machine and product (shapes, strides,
    threads) and remembered beside the compiled library (`ProductChoices`): a run resumed in a new
    process, or the same run repeated, then takes the same products as the first and gives the same
    numbers bit for bit, however busy the machine was when each one started."""
    forced = os.environ.get("GRU4REC_NATIVE_MM", "auto").strip().lower()
    if forced in ("1", "true", "yes", "on"):
        return matmul
    if forced in ("0", "false", "no", "off"):
        return torch.mm
    key = f"{part}: {tuple(A.shape)} {A.stride()} @ {tuple(B.shape)} {B.stride()}, {torch.get_num_threads()} threads"
    remembered = _product_choices().get(key)
    if remembered is not None:
        return matmul if remembered == "blocked" else torch.mm
    timings = {}
    for mm in (torch.mm, matmul, torch.mm, matmul):
        started = time.perf_counter()
        for _ in range(3):
            mm(A, B)
        seconds = (time.perf_counter() - started) / 3
        timings[mm] = min(seconds, timings.get(mm, math.inf))
    chosen = matmul if timings[matmul] * MM_MARGIN < timings[torch.mm] else torch.mm
    _product_choices().put(key, "blocked" if chosen is matmul else "pytorch")
    log.info("%s products: %s (%s @ %s: blocked kernel %.0f us, PyTorch %.0f us)", part,
             "the native blocked kernel" if chosen is matmul else "PyTorch's", tuple(A.shape), tuple(B.shape),
             timings[matmul] * 1e6, timings[torch.mm] * 1e6)
    return chosen


class ProductChoices:
    """Product choices by key, in a JSON file; a choice made elsewhere in the meantime is kept (the
    first one wins), and the file is replaced whole, so a reader never sees half of it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._choices = self._read()

    def _read(self) -> dict[str, str]:
        try:
            choices = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # none yet, or unreadable: timed again
            return {}
        return {k: v for k, v in choices.items() if v in ("blocked", "pytorch")} if isinstance(choices, dict) else {}

    def get(self, key: str) -> str | None:
        return self._choices.get(key)

    def put(self, key: str, choice: str) -> None:
        self._choices = {**self._read(), **self._choices}
        self._choices.setdefault(key, choice)
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=".products-", suffix=".json", dir=self.path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self._choices, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError as exc:  # a read-only cache: the choice holds for this process only
            log.debug("could not remember the product choice in %s (%s)", self.path, exc)
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)


@cache
def _product_choices() -> ProductChoices:
    return ProductChoices(Path(library()._name).with_suffix(".products.json"))


def adagrad_rows(
    p: Tensor, acc: Tensor, mom: Tensor | None, rows: Tensor | None, grad: Tensor, lr: float, momentum: float, eps: float
) -> None:
    """optim.AdagradMomentum's update in one pass: rows `rows` (no repeats) of p, or all of p when None."""
    lib = library()
    assert lib is not None
    if rows is None:  # a whole tensor is one long row
        n, D, row_ptr = 1, p.numel(), _ROW_ZERO.data_ptr()
    else:
        n, D, row_ptr = len(rows), p.numel() // max(len(p), 1), _ptr(rows, _LONG)
        if grad.numel() != n * D:
            raise ValueError(f"gradient of {tuple(grad.shape)} for {n} rows of length {D}")
    sizes_differ = acc.numel() != p.numel() or (mom is not None and mom.numel() != p.numel())
    if sizes_differ or (rows is None and grad.numel() != p.numel()):
        raise ValueError(f"parameter {tuple(p.shape)}, state {tuple(acc.shape)} and gradient {tuple(grad.shape)} disagree")
    n_rows = len(p) if rows is not None else 1
    if lib.g4r_adagrad_rows(_ptr(p), _ptr(acc), _ptr(mom), n_rows, row_ptr, _ptr(grad), n, D, lr, momentum, eps) < 0:
        raise IndexError(f"row index out of range [0, {n_rows})")


def output_rows_update(
    opt: AdagradMomentum, W: Tensor, b: Tensor, rows: Tensor, dW_rows: Tensor, db_rows: Tensor, is_column: Tensor,
    in_row: Tensor, dx: Tensor,
) -> None:
    """The shared-mode output table's AdagradMomentum update in one pass (see g4r_output_rows_update):
    rows `rows` of W get dW_rows plus the input gradients dx (input i is row in_row[i]), and the bias
    rows that are score columns get db_rows. dW_rows is consumed."""
    lib = library()
    assert lib is not None
    state, b_state = opt.state_for(W), opt.state_for(b)
    R, B = len(rows), len(in_row)
    if dW_rows.shape != (R, W.shape[1]) or db_rows.numel() != R or is_column.numel() != R or dx.shape != (B, W.shape[1]):
        raise ValueError(f"gradients {tuple(dW_rows.shape)}, {tuple(db_rows.shape)}, {tuple(dx.shape)} for {R} rows "
                         f"of {tuple(W.shape)} and {B} inputs")
    if b.numel() != len(W):
        raise ValueError(f"bias of {tuple(b.shape)} for a table of {tuple(W.shape)}")
    done = lib.g4r_output_rows_update(
        _ptr(W), _ptr(state["acc"]), _ptr(state.get("mom")), _ptr(b), _ptr(b_state["acc"]), _ptr(b_state.get("mom")),
        len(W), W.shape[1], _ptr(rows, _LONG), R, _ptr(dW_rows), _ptr(db_rows), _ptr(is_column, torch.uint8),
        _ptr(in_row, _LONG), _ptr(dx), B, opt.lr, opt.momentum, opt.eps,
    )
    if done < 0:
        raise IndexError(f"row index out of range [0, {len(W)}) or input row out of [0, {R})")


def alias_table(scaled: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """sampling.alias_table_loop in C (the same table, bit for bit); None when the kernels are not available."""
    lib = library()
    if lib is None:
        return None
    n = len(scaled)
    residual = np.array(scaled, dtype=np.float64)  # a fresh contiguous copy: the kernel consumes it
    prob, alias = np.ones(n), np.arange(n, dtype=np.int64)
    scratch = np.empty((2, n), dtype=np.int64)
    lib.g4r_alias_table(residual.ctypes.data, n, prob.ctypes.data, alias.ctypes.data, scratch[0].ctypes.data,
                        scratch[1].ctypes.data)
    return prob, alias


class Scratch:
    """Per-thread scratch arrays for the kernels, kept from call to call (fresh pages on every call cost
    more than the work), up to `keep_bytes` each: larger ones are made per call. Callers hold the
    array (not only its address) until the kernel returns."""

    def __init__(self, keep_bytes: int) -> None:
        self.keep_bytes = keep_bytes
        self._local = threading.local()

    def get(self, name: str, shape: tuple[int, ...], dtype: type) -> tuple[np.ndarray, int]:
        """This thread's array `name` of `shape`, and its address."""
        buffers = getattr(self._local, "buffers", None)
        if buffers is None:
            buffers = self._local.buffers = {}
        size, itemsize = math.prod(shape), np.dtype(dtype).itemsize
        if size * itemsize > self.keep_bytes:
            array = np.empty(shape, dtype=dtype)
            return array, array.ctypes.data
        kept = buffers.get(name)
        if kept is None or kept[0].size < size:
            grown = min(max(size, 2 * (0 if kept is None else kept[0].size)), self.keep_bytes // itemsize)
            array = np.empty(grown, dtype=dtype)
            kept = buffers[name] = (array, array.ctypes.data)
        return kept[0][:size].reshape(shape), kept[1]


def score_items(weights: Tensor, bias: Tensor, h: Tensor, labels: Tensor) -> Tensor:
    """Exact scores [sessions, m] of items `labels` [sessions, m] (int64; -1: none, scored -inf) for
    session rows h [sessions, d]: bias + h . w summed as the exact top-k sums it (ScoreTable), so an
    item has the same score whether an index found it or every item was scored; each row is asked
    from memory ahead of its turn (at a million items the rows are cache and TLB misses)."""
    b, m = labels.shape
    n, d = weights.shape
    if h.shape != (b, d) or bias.shape != (n,):
        raise ValueError(f"score_items: h {tuple(h.shape)}, labels {tuple(labels.shape)}, table {tuple(weights.shape)} "
                         f"and bias {tuple(bias.shape)} do not fit")
    out, work, exact = torch.empty((b, m)), torch.empty(m, dtype=_LONG), torch.empty(m)
    if library().g4r_score_items(_ptr(weights), _ptr(bias), n, _ptr(h), b, d, _ptr(labels, _LONG), m, work.data_ptr(),
                                 exact.data_ptr(), out.data_ptr()) < 0:
        raise IndexError(f"score_items: an item outside [-1, {n})")
    return out


class ScoreTable:
    """The output layer (item rows W [n_items, d] and their bias) for the service's exact top-k: an
    8-bit copy in panels of 64 items, read once per batch for approximate scores (a quarter of the
    bytes of float32: in a busy server the read is the cost), each item's terms of the
    approximation's error bound, and the float32 rows for scoring the few items that the bounds cannot
    rule out (see g4r_screen and g4r_refine in kernels.c). Memory: the model's rows, plus a quarter of
    their bytes and 20 bytes per item."""

    ROWS_AT_ONCE = 1_024  # rows per chunk when the table is built (float64 temporaries under 1 MB)
    MAX_DIM = 1_024  # SCORE_MAX_DIM in kernels.c: integer sums stay exact in float32
    KEEP_BYTES = 32 << 20  # larger scratch (big batches of a big catalogue) is not kept between calls

    def __init__(self, weights: Tensor, bias: Tensor) -> None:
        lib = library()
        if lib is None:
            raise RuntimeError("the native kernels are not available")
        n, d = weights.shape
        if weights.dtype != torch.float32 or bias.shape != (n,):
            raise ValueError(f"ScoreTable: weights {weights.dtype} {tuple(weights.shape)} and bias {tuple(bias.shape)} do not fit")
        if d > self.MAX_DIM:
            raise ValueError(f"ScoreTable: rows of {d} values, over the kernels' {self.MAX_DIM}")
        self.weights, self.bias = weights.contiguous(), bias.contiguous()
        self.n_items, self.dim = n, d
        width, d4 = int(lib.g4r_score_panel()), -(-d // 4)
        padded = -(-n // width) * width
        # [panels, d / 4, width, 4]: 4 dims of an item side by side (q + 128; padding q = 0)
        self.panels = np.full((padded // width, d4, width, 4), 128, dtype=np.uint8)
        self.scale, self.padded_bias = np.zeros(padded, dtype=np.float32), np.zeros(padded, dtype=np.float32)
        self.padded_bias[:n] = self.bias.numpy()
        self.nrm, self.c = np.empty(n, dtype=np.float32), np.empty(n, dtype=np.float32)
        for lo in range(0, n, self.ROWS_AT_ONCE):
            self._quantise_rows(lo, min(n, lo + self.ROWS_AT_ONCE))
        g = (2 * d + 4) * 2.0**-24
        self.beta = _up((g + 4 * 2.0**-24) * np.abs(self.bias.numpy().astype(np.float64)))
        self.n_max, self.c_max, self.beta_max = float(self.nrm.max()), float(self.c.max()), float(self.beta.max())  # exact
        # raw pointers, once: numpy's .ctypes costs microseconds per use, and these are used per batch
        self._table = [a.ctypes.data for a in (self.panels, self.scale, self.padded_bias)]
        self._terms = [a.ctypes.data for a in (self.nrm, self.c, self.beta)]
        self.scratch = Scratch(self.KEEP_BYTES)
        self.scored_exactly = 0  # the most items one session of the last top_k scored exactly (diagnostics)

    def _quantise_rows(self, lo: int, hi: int) -> None:
        """Rows lo..hi: q = round(w / s), s = max|w| / 127 (float32, as the kernel multiplies), into the
        panels; |w| and |w - s q| + 4 u |s q|, rounded up, into the bound's terms."""
        w = self.weights[lo:hi].numpy().astype(np.float64)
        scale = (np.abs(w).max(axis=1) / 127).astype(np.float32)
        q = np.clip(np.rint(w / np.where(scale > 0, scale, 1).astype(np.float64)[:, None]), -127, 127)
        w_hat = q * scale.astype(np.float64)[:, None]
        self.scale[lo:hi] = scale
        self.nrm[lo:hi] = _up(np.linalg.norm(w, axis=1))
        self.c[lo:hi] = _up(np.linalg.norm(w - w_hat, axis=1) + 4 * 2.0**-24 * np.linalg.norm(w_hat, axis=1))
        width = self.panels.shape[2]
        stored = np.full((hi - lo, self.panels.shape[1] * 4), 128, dtype=np.uint8)
        stored[:, : self.dim] = (q + 128).astype(np.uint8)
        for j in range(lo, hi, width):  # whole panels, or the part of one that these rows fill
            panel, at = divmod(j, width)
            rows = stored[j - lo : min(hi, j + width - at) - lo]
            self.panels[panel, :, at : at + len(rows)] = rows.reshape(len(rows), -1, 4).transpose(1, 0, 2)

    def screen(self, h: Tensor) -> Tensor:
        """Approximate scores [sessions, n_items] of session rows h [sessions, d] (the 8-bit table), in
        this thread's scratch: valid until its next `screen`."""
        if h.dim() != 2 or h.shape[1] != self.dim:
            raise ValueError(f"ScoreTable: h {tuple(h.shape)} does not fit a table of dimension {self.dim}")
        b = h.shape[0]
        out, out_ptr = self.scratch.get("approx", (b, self.n_items), np.float32)
        qwork, qwork_ptr = self.scratch.get("qh", (b, self.panels.shape[1] * 4), np.int8)  # held until the call returns
        library().g4r_screen(*self._table, _ptr(h), b, self.n_items, self.dim, qwork_ptr, out_ptr)
        return torch.from_numpy(out)

    def top_k(self, approx: Tensor, h: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """The exact float32 top-k ([sessions, k] values and item indices, best first, ties to the lower
        index) of sessions h from their approximate scores `approx` (from `screen`; -inf marks an
        excluded item); a session with fewer than k items left ends its row with -inf."""
        b, n = approx.shape
        if n != self.n_items or h.shape != (b, self.dim) or not 0 < k <= n:
            raise ValueError(f"ScoreTable.top_k: scores {tuple(approx.shape)}, h {tuple(h.shape)}, k = {k} do not fit")
        # the arrays are held (not only their addresses) until the call returns: one not kept as this
        # thread's scratch would otherwise be freed before the kernel writes to it
        work, work_ptr = self.scratch.get("work", (2 * n,), np.float32)  # N + k of each, k <= N
        cand, cand_ptr = self.scratch.get("cand", (2 * n,), np.int64)
        qwork, qwork_ptr = self.scratch.get("qh1", (self.panels.shape[1] * 4,), np.int8)
        values, indices = torch.empty((b, k)), torch.empty((b, k), dtype=_LONG)
        self.scored_exactly = library().g4r_refine(
            _ptr(approx), *self._terms, self.n_max, self.c_max, self.beta_max, _ptr(self.weights), _ptr(self.bias), _ptr(h),
            b, n, self.dim, k, work_ptr, cand_ptr, qwork_ptr, _ptr(values), _ptr(indices, _LONG))
        return values, indices


def _up(x: np.ndarray) -> np.ndarray:
    """float64 values as float32, rounded up (a bound must not shrink)."""
    y = x.astype(np.float32)
    return np.where(y.astype(np.float64) < x, np.nextafter(y, np.float32(np.inf)), y).astype(np.float32)


class GRUSteps:
    """The model's GRU layers for the service: steps of a batch of sessions on the packed state
    [sessions, sum(layer sizes)] the service stores (GRU4Rec.step_packed's), in g4r_gru_rows /
    g4r_onehot_rows. A served step of a few sessions is ~100 µs of PyTorch's per-op overhead around a
    few µs of arithmetic; here it is the arithmetic and one call per layer. Each session's sums are
    the same operations whatever it is batched with, so its new state is too, bit for bit."""

    ROWS_AT_ONCE = 4  # AFFINE_ROWS in kernels.c

    def __init__(self, model: GRU4Rec) -> None:
        lib = library()
        if lib is None:
            raise RuntimeError("the native kernels are not available")
        self.lib = lib
        self.state_size = int(sum(model.layer_sizes))
        self.n_items = model.n_items
        offsets = np.cumsum((0, *model.layer_sizes)).tolist()
        self._keep: list[Tensor] = []  # the tensors whose memory the pointers below address
        self.onehot: tuple[int, ...] | None = None
        if model.onehot is not None:  # layer 0 reads the one-hot input: its own gate form
            cell = model.onehot
            self.onehot = (*self._pointers(cell.Wx.weight, cell.bias, cell.Wrz, cell.Wh), cell.hidden_size)
        table = (model.Wy if model.E is None else model.E).weight
        # per GRUCell: its input (an item table, or None: the layer below, whose offset follows), the
        # input size, W_ih^T, b_ih, W_hh^T, b_hh, its size and offset in the state
        self.cells: list[tuple] = []
        for i, cell in enumerate(model.cells):
            layer = i + (self.onehot is not None)
            source = self._pointers(table)[0] if layer == 0 else None
            weights = self._pointers(cell.weight_ih.T, cell.bias_ih, cell.weight_hh.T, cell.bias_hh)
            self.cells.append((source, offsets[layer - 1] if layer else 0, cell.input_size, *weights, cell.hidden_size,
                               offsets[layer]))
        self._work_floats = 6 * self.ROWS_AT_ONCE * max(model.layer_sizes)
        self.scratch = Scratch(4 * self._work_floats)

    def _pointers(self, *tensors: Tensor) -> list[int]:
        kept = [t.detach().contiguous() for t in tensors]
        self._keep += kept
        return [_ptr(t) for t in kept]

    def step(self, states: np.ndarray, rows: np.ndarray, items: np.ndarray) -> None:
        """Feed items[i] to session rows[i] of `states` (float32 [sessions, state size], changed in
        place; int64 rows, none repeated, and items)."""
        if states.dtype != np.float32 or states.ndim != 2 or states.shape[1] != self.state_size or not states.flags.c_contiguous:
            raise ValueError(f"GRUSteps: states {states.dtype} {states.shape} for a state of {self.state_size}")
        if rows.dtype != np.int64 or items.dtype != np.int64 or rows.shape != items.shape or rows.ndim != 1:
            raise ValueError(f"GRUSteps: rows {rows.dtype} {rows.shape} and items {items.dtype} {items.shape}")
        rows, items = np.ascontiguousarray(rows), np.ascontiguousarray(items)
        B, n_s, ld = len(rows), len(states), self.state_size
        work_array, work = self.scratch.get("work", (self._work_floats,), np.float32)  # held until the calls return
        S, srows, item_ptr = states.ctypes.data, rows.ctypes.data, items.ctypes.data
        failed = False
        if self.onehot is not None:
            Wx, bias, Wrz, Wh, H = self.onehot
            failed = self.lib.g4r_onehot_rows(Wx, item_ptr, self.n_items, bias, Wrz, Wh, H, S, ld, 0, srows, n_s, B, work) < 0
        for source, below, K, WiT, bi, WhT, bh, H, offset in self.cells:
            if source is not None:  # an item's input row
                X, ldx, xrows, n_x = source, K, item_ptr, self.n_items
            else:  # the layer below, already stepped, in the same rows
                X, ldx, xrows, n_x = S + 4 * below, ld, srows, n_s
            failed = failed or self.lib.g4r_gru_rows(X, ldx, xrows, n_x, K, WiT, bi, WhT, bh, H, S, ld, offset, srows, n_s, B, work) < 0
        if failed:
            raise IndexError(f"GRUSteps: an item outside [0, {self.n_items}) or a row outside [0, {n_s})")
