"""Threads: yielding OpenMP settings, the thread count, and the decode step's ThreadTuner."""

import os

import pytest

from lmgen.model.kernels import use_threads as set_threads
from lmgen.model.threads import SPIN_COUNT, ThreadTuner, yielding_threads


def test_tuner_keeps_the_faster_count_and_still_probes_the_other():
    tuner = ThreadTuner(2, explore_every=4)
    speed = {2: 0.01, 1: 0.02}  # quiet: two threads are faster
    picks = []
    for _ in range(40):
        n = tuner.pick()
        picks.append(n)
        tuner.record(n, speed[n])
    assert picks[:4] == [2, 1, 2, 1]  # the first steps try each count twice
    assert picks[4:].count(1) == 9 and picks[4:].count(2) == 27  # then every 4th step probes


def test_tuner_moves_to_one_thread_when_the_machine_gets_busy_and_back():
    tuner = ThreadTuner(2, explore_every=4)

    def run(speed, steps):
        picks = []
        for _ in range(steps):
            n = tuner.pick()
            picks.append(n)
            tuner.record(n, speed[n])
        return picks

    run({2: 0.01, 1: 0.015}, 20)
    busy = run({2: 0.2, 1: 0.03}, 40)  # other processes hold the cores: barriers wait
    assert busy[-10:].count(1) >= 7
    quiet = run({2: 0.01, 1: 0.015}, 60)
    assert quiet[-10:].count(2) >= 7


def test_a_short_run_on_a_busy_machine_adapts_within_its_first_steps():
    """The first step of a process is slow whatever the count (warming up): not held against it."""
    tuner = ThreadTuner(2)
    speed = {2: 0.1, 1: 0.005}  # another process holds a core: two threads wait at every barrier
    picks = []
    for step in range(32):
        n = tuner.pick()
        picks.append(n)
        tuner.record(n, speed[n] + (0.5 if step == 1 else 0))
    assert picks[4:31] == [1] * 27 and picks[31] == 2  # then one thread, probing two every 32nd step


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
