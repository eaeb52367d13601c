"""lmgen.serve.bridge with a fake engine, in-process: every ticket ends (events then None, or an
error then None) whatever the engine does — steps that raise, a drain, a stop — and the count of
requests in the house stays true, so the bound on it holds however many arrive at once."""

import asyncio
from collections import deque

import pytest
from hypothesis import given, settings, strategies as st

from lmgen.engine.engine import Job
from lmgen.engine.events import Finished, Token
from lmgen.engine.generation import GenerationSettings
from lmgen.errors import InputError
from lmgen.serve.bridge import FATAL_FAILURES, EngineThread, Refused, ShuttingDown, Ticket


class FakeEngine:
    """The engine's request API: each job yields ``tokens`` Token events then a Finished; steps
    listed in ``failing`` (counted across engines) raise."""

    steps = 0

    def __init__(self, rows: int, tokens: int = 3, failing: frozenset = frozenset(), hold: bool = False):
        self.rows, self.tokens, self.failing, self.hold = rows, tokens, failing, hold
        self.waiting: deque = deque()
        self.running: dict[int, list] = {}  # id -> [job, tokens done]
        self.prefilling: deque = deque()
        self.next_id = 0

    def add(self, job: Job) -> int:
        if job.rows > self.rows:
            raise InputError("too many samples")
        self.next_id += 1
        self.waiting.append((self.next_id, job))
        return self.next_id

    def abort(self, ident: int) -> None:
        self.waiting = deque(item for item in self.waiting if item[0] != ident)
        self.running.pop(ident, None)

    def busy(self) -> bool:
        return bool(self.waiting or self.running)

    def rows_in_flight(self) -> int:
        return sum(job.rows for job, _ in self.running.values())

    def ids_in_flight(self) -> set[int]:
        return set(self.running)

    def step(self) -> list:
        FakeEngine.steps += 1
        if FakeEngine.steps in self.failing:
            raise RuntimeError(f"step {FakeEngine.steps} broke")
        while self.waiting and self.rows_in_flight() + self.waiting[0][1].rows <= self.rows:
            ident, job = self.waiting.popleft()
            self.running[ident] = [job, 0]
        events = []
        for ident, state in list(self.running.items()):
            job, done = state
            if self.hold:
                continue
            if done < self.tokens:
                events += [Token(id=1, text="x", sample=s, index=ident) for s in range(job.rows)]
                state[1] += 1
            else:
                events += [Finished(reason="stop", text="", prompt_tokens=1, new_tokens=done, prefill_seconds=0,
                                    decode_seconds=0, sample=s, index=ident) for s in range(job.rows)]
                del self.running[ident]
        return events

    def end_all(self, reason: str) -> list:
        events = [Finished(reason=reason, text="", prompt_tokens=1, new_tokens=state[1], prefill_seconds=0,
                           decode_seconds=0, sample=s, index=ident)
                  for ident, state in self.running.items() for s in range(state[0].rows)]
        self.running.clear()
        return events


def bridge(rows=2, waiting=4, **fake) -> EngineThread:
    class Fake(EngineThread):
        def _new_engine(self):
            return FakeEngine(self.max_batch, **fake)

    FakeEngine.steps = 0
    return Fake(lm=None, max_batch=rows, max_waiting=waiting)


def job(n: int = 1) -> Job:
    return Job(ids=[1, 2], settings=GenerationSettings(num_samples=n))


async def outcome(ticket: Ticket, timeout: float = 30) -> list:
    """Every item of the ticket's queue up to the closing None (a hang fails the test)."""
    items = []
    while (item := await asyncio.wait_for(ticket.events.get(), timeout)) is not None:
        items.append(item)
    return items


def run(coroutine):
    return asyncio.run(coroutine)


def test_every_ticket_ends_with_its_events():
    async def main():
        thread = bridge()
        loop = asyncio.get_running_loop()
        tickets = [Ticket(job(n), loop) for n in (1, 2, 1, 1)]
        for ticket in tickets:
            thread.submit(ticket)
        results = [await outcome(ticket) for ticket in tickets]
        thread.stop()
        return thread, tickets, results

    thread, tickets, results = run(main())
    for ticket, items in zip(tickets, results):
        assert sum(isinstance(i, Finished) for i in items) == ticket.job.rows
        assert isinstance(items[-1], Finished)
    assert thread.in_house == 0


def test_a_job_that_can_never_fit_is_refused_when_it_arrives():
    async def main():
        thread = bridge(rows=2)
        with pytest.raises(InputError, match="n=3"):
            thread.submit(Ticket(job(3), asyncio.get_running_loop()))
        ticket = Ticket(job(2), asyncio.get_running_loop())  # the next one is served: nothing wedged
        thread.submit(ticket)
        items = await outcome(ticket)
        thread.stop()
        return items, thread

    items, thread = run(main())
    assert sum(isinstance(i, Finished) for i in items) == 2 and thread.in_house == 0


def test_the_bound_holds_for_requests_arriving_at_once():
    """rows + queue requests in the house; the rest are refused at once, not admitted."""

    async def main():
        thread = bridge(rows=2, waiting=2, hold=True)
        loop = asyncio.get_running_loop()
        accepted, refused = [], 0
        for _ in range(30):
            ticket = Ticket(job(), loop)
            try:
                thread.submit(ticket)
                accepted.append(ticket)
            except Refused:
                refused += 1
        for ticket in accepted:
            thread.cancel(ticket)
        await asyncio.sleep(0)
        thread.stop()
        return len(accepted), refused

    assert run(main()) == (4, 26)


def test_a_step_that_raises_ends_the_requests_in_flight_and_the_engine_is_rebuilt():
    async def main():
        thread = bridge(rows=1, waiting=4, failing=frozenset({2}))
        loop = asyncio.get_running_loop()
        first, second = Ticket(job(), loop), Ticket(job(), loop)
        thread.submit(first)
        thread.submit(second)
        results = await outcome(first), await outcome(second)
        healthy = thread.healthy()
        thread.stop()
        return results, healthy, thread

    (first, second), healthy, thread = run(main())
    assert isinstance(first[-1], RuntimeError)  # in flight when the step broke: its error
    assert isinstance(second[-1], Finished)  # waiting then: served by the rebuilt engine
    assert healthy and thread.in_house == 0


def test_an_engine_that_keeps_failing_is_given_up_and_nothing_hangs():
    told = []

    async def main():
        thread = bridge(rows=2, failing=frozenset(range(1, 100)))
        thread.on_fatal = told.append
        loop = asyncio.get_running_loop()
        tickets = [Ticket(job(), loop) for _ in range(5)]
        for ticket in tickets:
            thread.submit(ticket)
        results = [await outcome(ticket) for ticket in tickets]
        with pytest.raises(Refused, match="failed"):
            thread.submit(Ticket(job(), loop))
        return results, thread

    results, thread = run(main())
    thread.thread.join(timeout=60)  # the tickets end before on_fatal is told: wait for the thread's end
    assert all(isinstance(items[-1], RuntimeError) for items in results)
    assert not thread.healthy() and len(told) == 1 and thread.in_house == 0
    assert FakeEngine.steps >= FATAL_FAILURES


def test_a_drain_refuses_the_queue_and_ends_the_rest_with_abort():
    async def main():
        thread = bridge(rows=1, waiting=4, hold=True)
        loop = asyncio.get_running_loop()
        running, queued = Ticket(job(), loop), Ticket(job(), loop)
        thread.submit(running)
        while thread.rows_in_flight() == 0:  # the first holds the only row
            await asyncio.sleep(0.01)
        thread.submit(queued)
        thread.drain(0.2)
        with pytest.raises(ShuttingDown):
            thread.submit(Ticket(job(), loop))
        results = await outcome(running), await outcome(queued)
        thread.stop()
        return results, thread

    (running, queued), thread = run(main())
    assert isinstance(running[-1], Finished) and running[-1].reason == "abort"
    assert isinstance(queued[-1], ShuttingDown)
    assert thread.in_house == 0


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3), st.booleans()), min_size=1, max_size=12),
       st.frozensets(st.integers(1, 30), max_size=3))
def test_any_mix_of_requests_cancels_and_failures_ends_every_ticket(plan, failing):
    """Invariant: whatever is submitted, cancelled or broken, every accepted ticket ends (a
    Finished per sample, or an error) and the house is empty afterwards."""

    async def main():
        thread = bridge(rows=3, waiting=20, failing=failing)
        loop = asyncio.get_running_loop()
        tickets = []
        for n, cancel in plan:
            ticket = Ticket(job(n), loop)
            thread.submit(ticket)
            tickets.append(ticket)
            if cancel:
                thread.cancel(ticket)
        ends = []
        for ticket in tickets:
            if ticket.cancelled:  # nobody reads a cancelled ticket; it must still leave the house
                continue
            ends.append((ticket, await outcome(ticket)))
        for _ in range(200):
            if thread.in_house == 0:
                break
            await asyncio.sleep(0.01)
        thread.stop()
        return ends, thread

    ends, thread = run(main())
    for ticket, items in ends:
        finished = sum(isinstance(i, Finished) for i in items)
        assert finished == ticket.job.rows or isinstance(items[-1], Exception)
    assert thread.in_house == 0
