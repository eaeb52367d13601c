"""Threads that yield the cores when other processes want them.

OpenMP's worker threads (PyTorch's and the native kernels') spin while they wait for work,
so that the next parallel region starts at once. On a machine whose cores are all busy with
other processes, spinning threads take turns with the threads that have work, and every
barrier waits for a time slice: decode fell 20-40× on a loaded 2-core machine. lmgen makes
the waiting threads sleep instead (``OMP_WAIT_POLICY=passive``) unless the user has chosen a
policy, and runs as many threads as the cores the process may use.
"""

from __future__ import annotations

import os

from lmgen.errors import InputError
from lmgen.resources import available_cores


def yielding_threads() -> None:
    """Ask OpenMP runtimes loaded from now on to sleep, not spin, while they wait.

    Must run before torch (or the kernels) are loaded: OpenMP reads the setting once.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")


def set_threads(count: int | None) -> int:
    """Use count threads (default: the cores available to this process) for torch and the kernels."""
    if count is not None and count < 1:
        raise InputError(f"threads must be >= 1, got {count}")
    count = count or available_cores()
    import torch

    from lmgen import kernels

    torch.set_num_threads(count)
    kernels.set_threads(count)
    return count
