"""Admission and batching: a bounded queue in front of one engine worker.

``submit`` admits a request only while fewer than ``max_batch + queue_depth`` are admitted and
unfinished, otherwise it refuses at once (``QueueFull``): no unbounded backlog. The worker takes
up to ``max_batch`` queued requests at a time and compresses them together (their coarse passes
share forward passes). A cancelled or expired request leaves the queue at once, freeing its place;
one already running is dropped at the next stage boundary and its result discarded.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from compressor.compression.pipeline import Compressor
from compressor.compression.request import CompressRequest, CompressResult


class QueueFull(Exception):
    """Every admission slot is taken."""

    def __init__(self, capacity: int) -> None:
        super().__init__(f"server busy: all {capacity} admission slots are taken; retry with backoff")


class Draining(Exception):
    """The server is shutting down and takes no new work."""

    def __init__(self) -> None:
        super().__init__("the server is draining (shutting down); retry on another replica")


class Abandoned(Exception):
    """The client cancelled, or its deadline passed, before the work finished."""


@dataclass(eq=False)
class Ticket:
    """One admitted request: its deadline, and its result or error once the worker is done."""

    request: CompressRequest
    deadline: float | None  # time.monotonic() after which nobody waits for the result
    enqueued: float = field(default_factory=time.monotonic)
    started: float | None = None
    batch_size: int = 0
    result: CompressResult | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)
    cancelled: bool = False

    def alive(self) -> bool:
        return not self.cancelled and (self.deadline is None or time.monotonic() < self.deadline)


class Scheduler:
    def __init__(self, compressor: Compressor, max_batch: int, queue_depth: int,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self.compressor = compressor
        self.max_batch = max_batch
        self.capacity = max_batch + queue_depth
        self._queue: deque[Ticket] = deque()
        self._admitted = 0
        self._draining = False
        self._condition = threading.Condition()
        self._on_batch = on_batch
        self._worker = threading.Thread(target=self._run, name="focal-engine", daemon=True)
        self._worker.start()

    @property
    def admitted(self) -> int:
        return self._admitted

    @property
    def queued(self) -> int:
        return len(self._queue)

    def submit(self, request: CompressRequest, deadline: float | None) -> Ticket:
        job = Ticket(request, deadline)
        with self._condition:
            if self._draining:
                raise Draining()
            if self._admitted >= self.capacity:
                raise QueueFull(self.capacity)
            self._admitted += 1
            self._queue.append(job)
            self._condition.notify()
        return job

    def cancel(self, job: Ticket) -> None:
        """Give up on ``job``: out of the queue at once if it waits there; dropped at the next stage if running."""
        with self._condition:
            if job.done.is_set():
                return
            job.cancelled = True
            if job in self._queue:
                self._queue.remove(job)
                self._release(job, Abandoned())

    def drain(self) -> None:
        with self._condition:
            self._draining = True

    def _release(self, job: Ticket, error: BaseException | None = None) -> None:
        job.error = error
        self._admitted -= 1
        job.done.set()

    def _take(self) -> list[Ticket]:
        with self._condition:
            while not self._queue:
                self._condition.wait()
            batch = []
            while self._queue and len(batch) < self.max_batch:
                job = self._queue.popleft()
                if job.alive():
                    batch.append(job)
                else:
                    self._release(job, Abandoned())
            return batch

    def _compress(self, batch: list[Ticket]) -> list[CompressResult | BaseException | None]:
        """Compress a batch together; if that fails, each request alone, so one bad request
        cannot fail the others (its error goes to its own handler)."""
        by_request = {id(job.request): job for job in batch}
        try:
            return self.compressor.compress_many([job.request for job in batch],
                                                 alive=lambda r: by_request[id(r)].alive())
        except Exception as exc:
            if len(batch) == 1:
                return [exc]
        outcomes: list[CompressResult | BaseException | None] = []
        for job in batch:
            try:
                outcomes.append(self.compressor.compress_many([job.request], alive=lambda _r, job=job: job.alive())[0])
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    def _run(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                continue
            now = time.monotonic()
            for job in batch:
                job.started, job.batch_size = now, len(batch)
            results = self._compress(batch)
            if self._on_batch:  # before any reply, so metrics scraped after a reply include its batch
                self._on_batch(len(batch))
            with self._condition:
                for job, outcome in zip(batch, results):
                    if isinstance(outcome, BaseException):
                        self._release(job, outcome)
                    elif outcome is None or not job.alive():
                        self._release(job, Abandoned())
                    else:
                        job.result = outcome
                        self._release(job)
