"""The engine thread: HTTP requests join the batching engine's rows as they free up.

One thread owns the model and its KV cache (``engine.batching.Engine``). The event loop hands it
``Job``s (a prompt's token ids, its settings, its number of samples); it admits a waiting job
when the job's samples fit in free rows, decodes one token for every row per step, and sends
each job's events back to the event loop through the job's own queue (``None`` ends it). A job
whose client went away is flagged ``cancelled``; its rows are freed before the next step, and no
other job is touched. A request's output does not depend on its neighbours: the engine's rows
decode exactly as they would alone.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections import deque
from dataclasses import dataclass, field

from lmgen.engine.batching import Engine
from lmgen.engine.generation import Finished, GenerationSettings
from lmgen.engine.prefix_cache import PrefixCache


@dataclass
class Job:
    ids: list[int]
    settings: GenerationSettings
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)  # Token and Finished events, then None
    cancelled: bool = False
    index: int = -1  # its prompt index in the engine, once admitted
    finished: int = 0  # samples done

    def send(self, item) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, item)


def _deliver(items: list) -> None:
    """On the event loop: each (job, event) of a step into the job's queue."""
    for job, item in items:
        job.events.put_nowait(item)


class EngineThread:
    """The engine, run on a thread of its own; ``submit`` and ``cancel`` are safe from any thread."""

    def __init__(self, lm, max_batch: int, max_waiting: int, prefix_cache_bytes: int = 0):
        self.engine = Engine(lm, max_batch, PrefixCache(prefix_cache_bytes) if prefix_cache_bytes > 0 else None)
        self.max_batch, self.max_waiting = max_batch, max_waiting
        self.inbox: queue.Queue[Job] = queue.Queue()
        self.waiting: deque[Job] = deque()
        self.running: dict[int, Job] = {}
        self.next_index = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="lmgen-engine", daemon=True)
        self.thread.start()

    def submit(self, job: Job) -> bool:
        """Queue a job; False when the rows and the waiting room are full (answer 503)."""
        if self.inbox.qsize() + len(self.waiting) >= self.max_waiting and self.rows_in_flight() >= self.max_batch:
            return False
        self.inbox.put(job)
        return True

    def rows_in_flight(self) -> int:
        return len(self.engine.in_flight())

    def queued(self) -> int:
        return self.inbox.qsize() + len(self.waiting)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=30)

    # ------------------------------------------------------------------------------ the thread

    def _run(self) -> None:
        while not self.stopping.is_set():
            idle = not self.engine.in_flight() and not self.waiting
            try:  # block only when there is nothing to decode
                self.waiting.append(self.inbox.get(timeout=0.05) if idle else self.inbox.get_nowait())
                continue  # take every queued job before the next step
            except queue.Empty:
                pass
            self._drop_cancelled()
            self._admit()
            if self.engine.in_flight():
                self._dispatch(self.engine.step())
        for job in [*self.running.values(), *self.waiting]:  # shutting down: end every stream
            job.send(None)

    def _drop_cancelled(self) -> None:
        for index, job in list(self.running.items()):
            if job.cancelled:
                self.engine.drop(index)
                del self.running[index]
        self.waiting = deque(job for job in self.waiting if not job.cancelled)

    def _admit(self) -> None:
        """Waiting jobs, in order, while their samples fit in the free rows."""
        while self.waiting and len(self.engine.free_slots()) >= self.waiting[0].settings.num_samples:
            job = self.waiting.popleft()
            job.index, self.next_index = self.next_index, self.next_index + 1
            self.running[job.index] = job
            slots = self.engine.free_slots()
            seed = job.settings.seed
            try:
                for sample in range(job.settings.num_samples):
                    self._dispatch(self.engine.join(slots[sample], job.index, sample, job.ids, job.settings,
                                                    job.settings.max_new_tokens, seed))
            except Exception as exc:  # noqa: BLE001 - the job's own failure, told to its request alone
                self.engine.drop(job.index)
                self.running.pop(job.index, None)
                job.send(exc)

    def _dispatch(self, events) -> None:
        """A step's events to their jobs, with one wake-up of the event loop for all of them (one
        per event cost more than the step itself with many streams)."""
        batches: dict = {}
        for event in events:
            job = self.running.get(event.index)
            if job is None:
                continue
            items = batches.setdefault(job.loop, [])
            items.append((job, event))
            if isinstance(event, Finished):
                job.finished += 1
                if job.finished == job.settings.num_samples:
                    del self.running[event.index]
                    items.append((job, None))
        for loop, items in batches.items():
            loop.call_soon_threadsafe(_deliver, items)

