"""Memory: what this process holds, and handing cached Arrow memory back to the system."""

from __future__ import annotations

import contextlib
import ctypes
import sys
from typing import Any

_HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE, _MADV_COLLAPSE = 14, 25  # Linux <asm-generic/mman-common.h>


def resident_memory() -> str:
    """Current and peak resident memory of this process (Linux), for -v logs."""
    try:
        with open("/proc/self/status") as fh:
            fields = dict(line.split(":", 1) for line in fh if line.startswith(("VmRSS", "VmHWM")))
        return ", ".join(f"{k} {int(v.split()[0]) / 1e6:.2f} GB" for k, v in fields.items())
    except (OSError, ValueError):
        return "unknown"


def release_arrow_memory() -> None:
    """Hand memory that pyarrow's allocator keeps cached back to the system (large reads leave a lot)."""
    import pyarrow as pa

    with contextlib.suppress(AttributeError):  # pyarrow < 16 has no release_unused
        pa.default_memory_pool().release_unused()


def available_memory() -> int | None:
    """Bytes this process can still allocate: MemAvailable, capped by a container's (cgroup) limit.
    None where the system does not say (not Linux)."""
    try:
        with open("/proc/meminfo") as fh:
            available = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),  # v1
    ):
        with contextlib.suppress(OSError, ValueError):
            with open(limit_file) as lim, open(usage_file) as use:
                available = min(available, max(0, int(lim.read().strip()) - int(use.read().strip())))
    return available


def format_bytes(n: float) -> str:
    """1.5 GB, 320 MB, 12 kB: sizes in messages (decimal units, like df -H)."""
    for unit, size in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def advise_huge_pages(tensor: Any, collapse: bool = True) -> bool:
    """Back a large CPU tensor with 2 MB pages where Linux allows it (best effort; True when advised).

    Why: training reads and updates a few thousand random rows of each item table per step. With
    1.4M items the tables (and their optimiser state) are hundreds of MB each, and on 4 kB pages
    nearly every row costs a TLB miss and a page walk; with 2 MB pages the same updates took 40% less
    time (measured at 1.4M items, the fused step 24% faster). The pages the tensor already has are
    collapsed at once where the kernel can (Linux 6.1+; a copy: about 1 s per GB), else by khugepaged
    in the background; `collapse=False` for memory not written yet, which then faults in huge pages.
    """
    if sys.platform != "linux" or not getattr(tensor, "is_cpu", False):
        return False
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    lo, hi = -(-start // _HUGE_PAGE) * _HUGE_PAGE, end // _HUGE_PAGE * _HUGE_PAGE
    if hi - lo < 4 * _HUGE_PAGE:  # small tables stay in the caches anyway
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), _MADV_HUGEPAGE) != 0:
            return False
        if collapse:
            libc.madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo), _MADV_COLLAPSE)  # may fail: khugepaged then
    except (OSError, AttributeError):
        return False
    return True


def zeros_on_huge_pages(like: Any) -> Any:
    """torch.zeros_like(like), on 2 MB pages from the start where advise_huge_pages applies (no copy)."""
    import torch

    if not like.is_cpu:
        return torch.zeros_like(like)
    out = torch.empty_like(like)
    advise_huge_pages(out, collapse=False)
    return out.zero_()
