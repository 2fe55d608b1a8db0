"""Memory: what this process holds, and handing cached Arrow memory back to the system."""

from __future__ import annotations

import contextlib


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
