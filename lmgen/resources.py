"""What the machine gives this process: memory to allocate and cores to run on.

Checked before committing to them: a config that implies a KV cache or weight copies larger
than the memory available is refused with one line (exit 4) instead of growing until the
kernel kills the process; the thread count follows the cores the process may run on.
"""

from __future__ import annotations

import os

from lmgen.errors import EnvironmentFailure


def available_memory() -> int | None:
    """Bytes the kernel could give us now (MemAvailable), or None where it cannot be read."""
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def require_memory(nbytes: int, what: str) -> None:
    """Refuse to allocate nbytes for ``what`` if the machine does not have them free."""
    free = available_memory()
    if free is not None and nbytes > free:
        raise EnvironmentFailure(f"{what} would need {nbytes / 1e9:.2f} GB of memory; {free / 1e9:.2f} GB is available")


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, which taskset and containers set)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)
