"""Threads: yielding OpenMP settings, the thread count, and the decode step's ThreadTuner."""

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmgen.model.kernels import use_threads as set_threads
from lmgen.model.threads import SPIN_COUNT, ThreadTuner, other_runnable, yielding_threads


def run_tuner(tuner: ThreadTuner, speed: dict, steps: int) -> list[int]:
    picks = []
    for _ in range(steps):
        n = tuner.pick()
        picks.append(n)
        tuner.record(n, speed[n])
    return picks


def test_tuner_keeps_the_faster_count_and_still_probes_the_other():
    tuner = ThreadTuner(2, explore_every=4)
    picks = run_tuner(tuner, {2: 0.01, 1: 0.015}, 60)  # quiet: two threads are faster
    assert picks[:4] == [2, 1, 2, 1]  # the first steps try each count twice
    # then, from explore_every steps on, the other count every 25th step: its extra half a step
    # is then 2% of the time
    assert [i for i, n in enumerate(picks) if n == 1][2:] == [7, 32, 57]


def test_tuner_moves_to_one_thread_when_the_machine_gets_busy_and_back():
    tuner = ThreadTuner(2, explore_every=4)
    run_tuner(tuner, {2: 0.01, 1: 0.015}, 20)
    busy = run_tuner(tuner, {2: 0.2, 1: 0.03}, 40)  # other processes hold the cores: barriers wait
    assert busy[-25:] == [1] * 25  # and two threads, now 6.7 times slower, are tried rarely
    quiet = run_tuner(tuner, {2: 0.01, 1: 0.015}, ThreadTuner.MAX_EXPLORE_EVERY + 10)
    assert quiet[-10:].count(2) >= 9  # the first try of two threads on a quiet machine wins at once


def test_a_short_run_on_a_busy_machine_adapts_within_its_first_steps():
    """The first step of a process is slow whatever the count (warming up): not held against it."""
    tuner = ThreadTuner(2)
    speed = {2: 0.1, 1: 0.005}  # another process holds a core: two threads wait at every barrier
    picks = []
    for step in range(32):
        n = tuner.pick()
        picks.append(n)
        tuner.record(n, speed[n] + (0.5 if step == 1 else 0))
    assert picks[4:] == [1] * 28  # then one thread; two are not tried again in a short run


def test_counts_with_no_free_cores_are_not_tried_while_other_processes_hold_them():
    """Beside a busy process a two-thread step can stall for 100-250 ms (its second thread
    waits for the busy core), so the tuner asks how many other threads are runnable: none are
    tried then, from the first step; once the cores are free again, they are."""
    others = {"runnable": 1}
    tuner = ThreadTuner(2, explore_every=4, runnable=lambda: others["runnable"])
    busy = run_tuner(tuner, {2: 0.2, 1: 0.013}, 200)
    assert busy == [1] * 200
    others["runnable"] = 0
    quiet = run_tuner(tuner, {2: 0.007, 1: 0.013}, 40)
    assert 2 in quiet[:5] and quiet[-10:].count(2) >= 9


@settings(max_examples=100, deadline=None)
@given(running=st.integers(0, 500), states=st.lists(st.sampled_from("RSDZ"), min_size=1, max_size=12),
       names=st.sampled_from(["python", "a) R (b", "lmgen serve"]))
def test_other_runnable_is_procs_running_less_this_processs_runnable_threads(tmp_path_factory, running, states,
                                                                             names):
    """Invariant: max(0, procs_running - own threads in state R), whatever a thread's name holds
    (the state is the field after the last ')')."""
    proc = tmp_path_factory.mktemp("proc")
    (proc / "stat").write_bytes(b"cpu  1 2 3\nprocs_running %d\nprocs_blocked 0\n" % running)
    for i, state in enumerate(states):
        (proc / "self" / "task" / str(100 + i)).mkdir(parents=True)
        (proc / "self" / "task" / str(100 + i) / "stat").write_bytes(f"{100 + i} ({names}) {state} 1 2 3".encode())
    assert other_runnable(str(proc)) == max(0, running - states.count("R"))
    (proc / "stat").write_bytes(b"cpu  1 2 3\n")  # no procs_running line: not known
    assert other_runnable(str(proc)) is None


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="Linux's /proc only")
def test_other_runnable_counts_threads_of_other_processes():
    import subprocess
    import sys
    import time

    assert isinstance(other_runnable(), int)  # known on Linux
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        deadline = time.monotonic() + 60
        while other_runnable() < 1:  # the burner is another process's runnable thread
            assert time.monotonic() < deadline, "a busy process was never counted"
            time.sleep(0.01)
    finally:
        burner.kill()
        burner.wait()


@settings(max_examples=200, deadline=None)
@given(times=st.lists(st.floats(0.001, 1.0), min_size=2, max_size=4), steps=st.integers(300, 3000),
       explore_every=st.integers(1, 64))
def test_trying_other_counts_costs_at_most_its_share_of_the_time(times, steps, explore_every):
    """With each count at a steady speed, the tuner settles on the fastest after its first steps,
    and the tries of the others cost at most EXPLORE_SHARE of the time (plus one try) — or, for a
    count more than 1 + EXPLORE_SHARE · MAX_EXPLORE_EVERY (11) times slower, one try every
    MAX_EXPLORE_EVERY steps; the others are tried in turn, each at least that often per other."""
    tuner = ThreadTuner(2 ** (len(times) - 1), explore_every=explore_every)
    speed = dict(zip(tuner.counts, times))
    picks = run_tuner(tuner, speed, steps)
    best = min(speed.values())
    after = picks[tuner.probing :]
    extra = sum(speed[n] - best for n in after)
    share = max(ThreadTuner.EXPLORE_SHARE, (max(speed.values()) / best - 1) / ThreadTuner.MAX_EXPLORE_EVERY)
    assert extra <= share * best * len(after) + max(speed.values())
    fastest = [n for n in tuner.counts if speed[n] == best]
    assert tuner.best in fastest
    tries = [k for k, n in enumerate(after) if n not in fastest]
    within = (len(tuner.counts) - 1) * (ThreadTuner.MAX_EXPLORE_EVERY + explore_every)  # the others in turn
    assert all(b - a <= within for a, b in zip(tries, tries[1:]))
    assert not tries or len(after) - tries[-1] <= within


def test_tuner_counts_are_halves_of_the_maximum():
    assert ThreadTuner(8).counts == [8, 4, 2, 1]
    assert ThreadTuner(6).counts == [6, 3, 1]
    assert ThreadTuner(1).counts == [1] and all(ThreadTuner(1).pick() == 1 for _ in range(64))


def test_yielding_threads_sets_a_short_spin_unless_the_user_chose(monkeypatch):
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME"):
        monkeypatch.delenv(name, raising=False)
    yielding_threads()
    assert os.environ["GOMP_SPINCOUNT"] == SPIN_COUNT
    monkeypatch.delenv("GOMP_SPINCOUNT")
    monkeypatch.setenv("OMP_WAIT_POLICY", "active")
    yielding_threads()
    assert "GOMP_SPINCOUNT" not in os.environ


def test_thread_count_follows_the_affinity_mask(monkeypatch):
    import torch

    before = torch.get_num_threads()
    monkeypatch.delenv("LMGEN_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    try:
        assert set_threads(None) == 1 and torch.get_num_threads() == 1
        assert set_threads(3) == 3
        monkeypatch.setenv("LMGEN_THREADS", "2")
        assert set_threads(None) == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("value", ["0", "two"])
def test_bad_lmgen_threads(monkeypatch, value):
    from lmgen.errors import InputError

    monkeypatch.setenv("LMGEN_THREADS", value)
    with pytest.raises(InputError, match="LMGEN_THREADS|threads must be"):
        set_threads(None)
