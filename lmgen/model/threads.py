"""Threads that yield the cores when other processes want them.

OpenMP's worker threads (PyTorch's and the native kernels') spin while they wait for work,
so that the next parallel region starts at once. On a machine whose cores are all busy with
other processes, spinning threads take turns with the threads that have work, and every
barrier waits for a time slice: decode fell 20-40× on a loaded 2-core machine. So lmgen
(1) lets waiting threads spin only briefly before they sleep, (2) runs as many threads as
the cores the process may use, and (3) times its decode steps and drops to fewer threads
when that is faster, as it is when other processes hold the cores (``ThreadTuner``).
"""

from __future__ import annotations

import math
import os

from lmgen.errors import InputError
from lmgen.resources import available_cores

# Spin about ten microseconds, then sleep: long enough to catch the next parallel region of
# a decode step on a quiet machine (fully passive threads cost 40% of decode speed here),
# short enough that an idle thread gives its core away.
SPIN_COUNT = "10000"


def yielding_threads() -> None:
    """Ask OpenMP runtimes loaded from now on to spin only briefly before they sleep.

    Must run before torch (or the kernels) are loaded: OpenMP reads the setting once. Left
    alone where the user has set a wait policy of their own.
    """
    if "OMP_WAIT_POLICY" in os.environ:
        return
    os.environ.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)  # GNU OpenMP (Linux): spin iterations
    os.environ.setdefault("KMP_BLOCKTIME", "1")  # LLVM OpenMP (macOS): milliseconds


MAX_THREADS = 4096  # far beyond any CPU; torch takes a C int


def other_runnable(proc: str = "/proc") -> int | None:
    """Threads of other processes running or waiting for a core right now (Linux's
    procs_running, less this process's own runnable threads: a server's event loop is not
    another process), or None where that is not known."""
    try:
        with open(f"{proc}/stat", "rb") as stat:
            running = next(int(line.split()[1]) for line in stat if line.startswith(b"procs_running "))
        own = 0
        for task in os.listdir(f"{proc}/self/task"):
            with open(f"{proc}/self/task/{task}/stat", "rb") as stat:
                own += stat.read().rpartition(b")")[2].split()[0] == b"R"
    except (OSError, ValueError, StopIteration, IndexError):
        return None
    return max(0, running - own)


def thread_count(count: int | None) -> int:
    """The threads to compute with: count, else $LMGEN_THREADS, else the cores available to
    this process (``kernels.use_threads`` applies it to torch and the kernels)."""
    if count is None:
        from lmgen.environment import whole

        count = whole("LMGEN_THREADS", 1, MAX_THREADS)
    if count is not None and not 1 <= count <= MAX_THREADS:
        raise InputError(f"threads must be from 1 to {MAX_THREADS}, got {count}")
    return count or available_cores()


class ThreadTuner:
    """Picks the decode step's thread count from how fast steps actually run.

    With every core busy elsewhere, a parallel region waits at its barrier for whichever of
    its threads the scheduler has set aside, once per region and ~150 regions per token; one
    thread has no barrier to wait at. So the tuner times each step and keeps a moving average
    per thread count (``max_threads``, its halves, 1), runs the fastest, and now and then tries
    the next other count once, so that it notices when the machine gets busy or quiet again.
    A try costs the time that count is slower, so tries are spaced to keep that under
    ``EXPLORE_SHARE`` of the time: every ``explore_every`` steps where the other count is at
    most ~1.6× slower (a quiet machine's one thread against two), up to every
    ``MAX_EXPLORE_EVERY`` where it is far slower (two threads beside a busy process, 5-10×:
    trying them every 32 steps had cost a fifth of the speed). A try that runs faster than the
    count's average replaces it, so a machine that got quiet is taken at the first try. A short
    generation must adapt too (29 tokens at 9 tokens/s with two threads beside a busy process, 190
    with one): its first steps try every count in turn, twice, keeping each count's fastest step
    (the very first step of a process pays for warming up). Counts with more threads than there
    are cores free of other processes' runnable threads (``runnable``: ``other_runnable``) are
    neither probed nor tried: beside a busy process such a step can stall for 100-260 ms.
    """

    EXPLORE_SHARE = 0.02  # of the time, at most, spent trying counts that were slower
    MAX_EXPLORE_EVERY = 512  # steps: a machine that got quiet again is noticed within this many

    def __init__(self, max_threads: int, explore_every: int = 32, smoothing: float = 0.3,
                 runnable=None):
        counts = {max_threads}
        while max_threads > 1:
            max_threads //= 2
            counts.add(max_threads)
        self.counts = sorted(counts, reverse=True)
        self.seconds = {n: None for n in self.counts}  # moving average of a step's time
        self.explore_every, self.smoothing = explore_every, smoothing
        self.runnable = runnable or (lambda: None)  # other processes' runnable threads, if known
        self.steps = 0
        self.next_probe = 0
        self.next_try = 0  # the step at which the next other count is tried
        # The first steps try each count that has cores free for it, twice (beside a busy process,
        # a step with more threads than free cores can stall for 100-250 ms: none is tried).
        self.probe_counts = [n for n in self.counts if n <= self.free_cores()]
        self.best = self.probe_counts[0]
        self.probing = 2 * len(self.probe_counts) if len(self.probe_counts) > 1 else 0
        if len(self.probe_counts) < len(self.counts):  # look again soon: the others may have been brief
            self.next_try = self.probing + 4

    def free_cores(self) -> int:
        """Cores not taken by other processes' runnable threads (all of them, if unknown). The
        fewest of three looks: a thread that is runnable for a moment (a kernel worker, a shell)
        rarely is at all three; a process computing always is."""
        looks = [self.runnable() for _ in range(3)]
        if None in looks:
            return self.counts[0]
        return max(1, self.counts[0] - min(looks))

    def pick(self) -> int:
        """The thread count for the next step."""
        self.steps += 1
        if self.steps <= self.probing:
            return self.probe_counts[(self.steps - 1) % len(self.probe_counts)]
        if len(self.counts) > 1 and self.steps >= (self.next_try or self.probing + self.explore_every):
            others = [n for n in self.counts if n != self.best]
            self.next_probe = (self.next_probe + 1) % len(others)
            count = others[self.next_probe]
            if count <= self.best or count <= self.free_cores():
                return count
            self.next_try = self.steps + self.explore_every  # no cores free for it: not now
        return self.best

    def spacing(self, count: int) -> int:
        """Steps until the next try after trying ``count``: its extra time (in steps at the best
        count's pace) over EXPLORE_SHARE, within explore_every..MAX_EXPLORE_EVERY."""
        extra = self.seconds[count] / max(self.seconds[self.best], 1e-9) - 1
        return min(self.MAX_EXPLORE_EVERY, max(self.explore_every, math.ceil(extra / self.EXPLORE_SHARE)))

    def record(self, count: int, seconds: float) -> None:
        old = self.seconds[count]
        tried = self.steps > self.probing and count != self.best
        if old is None or self.steps <= self.probing:  # the first steps: each count's fastest
            self.seconds[count] = seconds if old is None else min(old, seconds)
        elif tried and seconds < old:  # a try that ran faster counts in full: a quieter machine is taken at once
            self.seconds[count] = seconds
        else:
            self.seconds[count] = old + self.smoothing * (seconds - old)
        measured = {n: s for n, s in self.seconds.items() if s is not None}
        self.best = min(measured, key=measured.get)
        if tried:
            self.next_try = self.steps + self.spacing(count)
