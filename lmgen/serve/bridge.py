"""The engine thread: the hand-off between the event loop and the engine's request API.

One thread owns the model and its KV cache and drives ``engine.Engine`` (``add``, ``abort``,
``step``); the queue, admission and prefill chunking are the engine's. The event loop hands it
``Ticket``s (an engine ``Job`` and the queue its events go to) and flags the ones whose client
left; the thread adds and aborts them between steps and sends each step's events back with one
wake-up of the event loop. ``None`` ends a ticket's events; an exception in its queue ends it with
an error. How many requests are in the house is counted as they are submitted, so that the bound
(rows + queue) holds however many arrive at once. A step that raises ends every request in flight
with that error and the engine is built afresh (waiting requests keep their place); after
``FATAL_FAILURES`` such steps in a row the thread gives up: every request ends with the error,
new ones are refused, and ``on_fatal`` is told.
"""

from __future__ import annotations

import asyncio
import queue
import sys
import threading
import time
from dataclasses import dataclass, field

from lmgen.engine.engine import Engine, Job
from lmgen.engine.events import Failed, Finished
from lmgen.engine.prefix_cache import PrefixCache
from lmgen.errors import InputError

FATAL_FAILURES = 3  # steps in a row that raised before the engine is given up
IDLE_WAIT = 0.5  # seconds the idle thread sleeps on its inbox between checks of the drain clock


class Refused(Exception):
    """A request the engine thread will not run: full, shutting down, or the engine is gone."""


class ShuttingDown(Refused):
    pass


@dataclass(eq=False)
class Ticket:
    job: Job
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)  # Token/Finished, an exception, then None
    cancelled: bool = False
    ident: int = -1  # the engine's id, once added
    finished: int = 0  # samples done


def _deliver(items: list) -> None:
    """On the event loop: each (ticket, event) of a step into the ticket's queue."""
    for ticket, item in items:
        ticket.events.put_nowait(item)


class EngineThread:
    """The engine on a thread of its own; ``submit`` and ``cancel`` are safe from any thread."""

    def __init__(self, lm, max_batch: int, max_waiting: int, prefix_cache_bytes: int = 0,
                 prefill_budget: int | None = None, on_fatal=lambda exc: None, kv_cache_mib: int | None = None):
        self.lm, self.max_batch, self.max_waiting = lm, max_batch, max_waiting
        self.prefix_cache = PrefixCache(prefix_cache_bytes) if prefix_cache_bytes > 0 else None
        self.prefill_budget, self.on_fatal, self.kv_cache_mib = prefill_budget, on_fatal, kv_cache_mib
        self.engine = self._new_engine()
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()  # tickets to add, or None (a wake-up)
        self.tickets: dict[int, Ticket] = {}  # by engine id
        self.lock = threading.Lock()
        self.in_house = 0  # tickets submitted and not yet ended
        self.failed: BaseException | None = None
        self.drain_deadline: float | None = None
        self.failures = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="lmgen-engine", daemon=True)
        self.thread.start()

    def _new_engine(self) -> Engine:
        return Engine(self.lm, self.max_batch, self.prefix_cache, self.prefill_budget, self.kv_cache_mib)

    # ------------------------------------------------------------------ from the event loop

    def submit(self, ticket: Ticket) -> None:
        """Queue a ticket. InputError: it could never fit; Refused: full, draining or failed."""
        if ticket.job.rows > self.max_batch:
            raise InputError(f"n={ticket.job.rows} needs as many rows, and this server decodes at most "
                             f"{self.max_batch} at once (--max-batch)")
        with self.lock:
            if self.failed is not None:
                raise Refused(f"the engine failed: {self.failed}")
            if self.drain_deadline is not None:
                raise ShuttingDown("the server is shutting down")
            if self.in_house >= self.max_batch + self.max_waiting:
                raise Refused("the server is full; try again shortly")
            self.in_house += 1
        self.inbox.put(ticket)

    def cancel(self, ticket: Ticket) -> None:
        """The ticket's client left: its rows are freed before the next step."""
        if not ticket.cancelled:
            ticket.cancelled = True
            self.inbox.put(None)

    def drain(self, seconds: float) -> None:
        """Stop taking requests; those in flight finish within ``seconds`` or end then."""
        with self.lock:
            self.drain_deadline = time.monotonic() + seconds
        self.inbox.put(None)

    def rows_in_flight(self) -> int:
        return self.engine.rows_in_flight()

    def kv_bytes_held(self) -> int:
        return self.engine.kv_bytes_held()

    def preemptions(self) -> int:
        return self.engine.preemptions

    def queued(self) -> int:
        return len(self.engine.waiting) + self.inbox.qsize()

    def healthy(self) -> bool:
        return self.failed is None and self.thread.is_alive()

    def stop(self) -> None:
        self.stopping.set()
        self.inbox.put(None)
        self.thread.join(timeout=30)

    # ---------------------------------------------------------------------------- the thread

    def _run(self) -> None:
        try:
            while not self.stopping.is_set():
                self._take(block=not self.engine.busy())
                self._drop_cancelled()
                self._check_drain()
                if self.engine.busy():
                    self._step()
        except BaseException as exc:  # noqa: BLE001 - the thread itself broke: never leave requests hanging
            sys.stderr.write(f"lmgen: error: the engine thread failed: {type(exc).__name__}: {exc}\n")
            return self._give_up(exc)
        self._end_everything(ShuttingDown("the server stopped"))

    def _take(self, block: bool) -> None:
        """Every ticket in the inbox into the engine; with ``block``, wait for one first."""
        try:
            item = self.inbox.get(timeout=IDLE_WAIT) if block else self.inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            if item is not None:
                self._add(item)
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return

    def _add(self, ticket: Ticket) -> None:
        if self.drain_deadline is not None:
            return self._end(ticket, ShuttingDown("the server is shutting down"))
        try:
            ticket.ident = self.engine.add(ticket.job)
        except InputError as exc:
            return self._end(ticket, exc)
        self.tickets[ticket.ident] = ticket

    def _drop_cancelled(self) -> None:
        for ident, ticket in list(self.tickets.items()):
            if ticket.cancelled:
                self.engine.abort(ident)
                self._forget(ident)

    def _check_drain(self) -> None:
        """Draining: waiting requests are refused at once; at the deadline, those in flight end."""
        if self.drain_deadline is None:
            return
        for ident, _ in list(self.engine.waiting):
            self.engine.abort(ident)
            self._end(self.tickets.pop(ident), ShuttingDown("the server is shutting down"))
        if time.monotonic() >= self.drain_deadline and self.engine.busy():
            self._dispatch(self.engine.end_all("abort"))

    def _step(self) -> None:
        try:
            events = self.engine.step()
        except Exception as exc:  # noqa: BLE001 - a bug or a broken model: contained, told, never a hang
            return self._failed_step(exc)
        self.failures = 0
        self._dispatch(events)

    def _failed_step(self, exc: Exception) -> None:
        sys.stderr.write(f"lmgen: error: a decode step failed: {type(exc).__name__}: {exc}\n")
        self.failures += 1
        if self.failures >= FATAL_FAILURES:
            return self._give_up(exc)
        held = self.engine.ids_in_flight() | {fill.job for fill in self.engine.prefilling}
        waiting = list(self.engine.waiting)
        for ident in held:
            self._end(self.tickets.pop(ident), exc)
        try:
            self.engine = self._new_engine()  # a fresh KV cache; the waiting keep their place
        except Exception as again:  # noqa: BLE001
            return self._give_up(again)
        for ident, job in waiting:
            ticket = self.tickets.pop(ident)
            ticket.ident = self.engine.add(job)
            self.tickets[ticket.ident] = ticket

    def _give_up(self, exc: BaseException) -> None:
        with self.lock:
            self.failed = exc
        self._end_everything(exc)
        self.stopping.set()
        self.on_fatal(exc)

    def _end_everything(self, exc: BaseException) -> None:
        for ticket in list(self.tickets.values()):
            self._end(ticket, exc)
        self.tickets.clear()
        while True:
            try:
                item = self.inbox.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                self._end(item, exc)

    def _end(self, ticket: Ticket, error: BaseException) -> None:
        ticket.loop.call_soon_threadsafe(_deliver, [(ticket, error), (ticket, None)])
        self._release()

    def _forget(self, ident: int) -> None:
        del self.tickets[ident]
        self._release()

    def _release(self) -> None:
        with self.lock:
            self.in_house -= 1

    def _dispatch(self, events) -> None:
        """A step's events to their tickets, with one wake-up of each event loop for all of them
        (one per event cost more than the step itself with many streams)."""
        batches: dict = {}
        for event in events:
            ticket = self.tickets.get(event.index)
            if ticket is None:
                continue
            items = batches.setdefault(ticket.loop, [])
            if isinstance(event, Failed):
                self.engine.abort(event.index)
                items += [(ticket, InputError(event.message)), (ticket, None)]
                self._forget(event.index)
                continue
            items.append((ticket, event))
            if isinstance(event, Finished):
                ticket.finished += 1
                if ticket.finished == ticket.job.rows:
                    items.append((ticket, None))
                    self._forget(event.index)
        for loop, items in batches.items():
            loop.call_soon_threadsafe(_deliver, items)
