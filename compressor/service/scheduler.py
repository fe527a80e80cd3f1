"""Admission and batching: a bounded queue in front of one engine worker.

``submit`` admits a request only while fewer than ``max_batch + queue_depth`` are admitted and
unfinished, otherwise it refuses at once (``QueueFull``): no unbounded backlog. It also refuses at
once a request whose deadline cannot be met: the worker measures its speed (seconds per token, a
moving average over finished batches), and the tokens queued ahead of the request plus its own,
at that speed, must fit before the deadline (``WouldMissDeadline``, with the expected wait).

The worker takes up to ``max_batch`` queued requests at a time and compresses them together
(their coarse passes share forward passes). A cancelled or expired request leaves the queue at
once, freeing its place; one already running is dropped within one engine batch or prefill chunk
(the engine asks between them) and its result discarded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from compressor.compression.pipeline import Compressor
from compressor.compression.request import CompressRequest, CompressResult

log = logging.getLogger("focal")


class QueueFull(Exception):
    """Every admission slot is taken."""

    def __init__(self, capacity: int) -> None:
        super().__init__(f"server busy: all {capacity} admission slots are taken; retry with backoff")


class WouldMissDeadline(Exception):
    """The work queued ahead cannot finish before the request's deadline."""

    def __init__(self, expected: float, remaining: float) -> None:
        super().__init__(f"server busy: the expected wait of {expected:.1f} s (the queue ahead plus this request, "
                         f"at the measured speed) exceeds the {max(remaining, 0):.1f} s left before the deadline; "
                         "retry with backoff, or with a longer deadline")


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
    tokens: int = 0  # the request's tokens (its share of the work, for the expected wait)
    enqueued: float = field(default_factory=time.monotonic)
    started: float | None = None
    batch_size: int = 0
    result: CompressResult | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)
    cancelled: bool = False

    def alive(self) -> bool:
        return not self.cancelled and not self.expired()

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline


@dataclass(frozen=True)
class Hooks:
    """What the scheduler reports as it goes (the server turns these into metrics)."""

    batch_done: Callable[[int], None] = lambda _size: None  # a batch of that many requests finished
    admitted: Callable[[int], None] = lambda _count: None  # requests admitted and unfinished, after a change
    retried: Callable[[int], None] = lambda _size: None  # a failed batch of that size is retried one by one


class Scheduler:
    # Weight of the newest batch in the moving average of seconds per token.
    SPEED_SMOOTHING = 0.3

    def __init__(self, compressor: Compressor, max_batch: int, queue_depth: int, hooks: Hooks | None = None) -> None:
        self.compressor = compressor
        self.max_batch = max_batch
        self.capacity = max_batch + queue_depth
        self.hooks = hooks or Hooks()
        self._queue: deque[Ticket] = deque()
        self._admitted = 0
        self._draining = False
        self._seconds_per_token: float | None = None
        self._condition = threading.Condition()
        self._worker = threading.Thread(target=self._run, name="focal-engine", daemon=True)
        self._worker.start()

    @property
    def admitted(self) -> int:
        return self._admitted

    @property
    def queued(self) -> int:
        return len(self._queue)

    def expected_wait(self, tokens: int) -> float | None:
        """Seconds until a request of ``tokens`` would finish if admitted now (None before any measurement).
        A lower bound: the batch running now is not counted."""
        speed = self._seconds_per_token
        if speed is None:
            return None
        return speed * (tokens + sum(ticket.tokens for ticket in self._queue))

    def submit(self, request: CompressRequest, deadline: float | None, tokens: int = 0) -> Ticket:
        ticket = Ticket(request, deadline, tokens)
        with self._condition:
            if self._draining:
                raise Draining()
            if self._admitted >= self.capacity:
                raise QueueFull(self.capacity)
            expected = self.expected_wait(tokens)
            if deadline is not None and expected is not None and time.monotonic() + expected > deadline:
                raise WouldMissDeadline(expected, deadline - time.monotonic())
            self._admitted += 1
            self._queue.append(ticket)
            self._condition.notify()
            self.hooks.admitted(self._admitted)
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """Give up on ``ticket``: out of the queue at once if it waits there; dropped within one engine
        batch if running."""
        with self._condition:
            if ticket.done.is_set():
                return
            ticket.cancelled = True
            if ticket in self._queue:
                self._queue.remove(ticket)
                self._release(ticket, Abandoned())

    def drain(self) -> None:
        with self._condition:
            self._draining = True

    def _release(self, ticket: Ticket, error: BaseException | None = None) -> None:
        ticket.error = error
        self._admitted -= 1
        ticket.done.set()
        self.hooks.admitted(self._admitted)

    def _take(self) -> list[Ticket]:
        with self._condition:
            while not self._queue:
                self._condition.wait()
            batch = []
            while self._queue and len(batch) < self.max_batch:
                ticket = self._queue.popleft()
                if ticket.alive():
                    batch.append(ticket)
                else:
                    self._release(ticket, Abandoned())
            return batch

    def _compress(self, batch: list[Ticket]) -> list[CompressResult | BaseException | None]:
        """Compress a batch together; if that fails, each request alone, so one bad request
        cannot fail the others (its error goes to its own handler)."""
        by_request = {id(ticket.request): ticket for ticket in batch}
        try:
            return self.compressor.compress_many([ticket.request for ticket in batch],
                                                 alive=lambda r: by_request[id(r)].alive())
        except Exception as exc:
            if len(batch) == 1:
                return [exc]
            log.warning("batch failed; retrying its requests one at a time",
                        extra={"fields": {"batch": len(batch), "error": type(exc).__name__}})
            self.hooks.retried(len(batch))
        outcomes: list[CompressResult | BaseException | None] = []
        for ticket in batch:
            try:
                outcomes.append(self.compressor.compress_many([ticket.request],
                                                              alive=lambda _r, ticket=ticket: ticket.alive())[0])
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    def _measured(self, batch: list[Ticket], seconds: float) -> None:
        """Fold a finished batch into the moving average of seconds per token."""
        tokens = sum(ticket.tokens for ticket in batch)
        if tokens <= 0 or any(ticket.result is None for ticket in batch):
            return  # an abandoned or failed batch says nothing about the speed
        speed = seconds / tokens
        previous = self._seconds_per_token
        self._seconds_per_token = speed if previous is None else (
            self.SPEED_SMOOTHING * speed + (1 - self.SPEED_SMOOTHING) * previous)

    def _run(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                continue
            now = time.monotonic()
            for ticket in batch:
                ticket.started, ticket.batch_size = now, len(batch)
            results = self._compress(batch)
            self.hooks.batch_done(len(batch))  # before any reply, so metrics scraped after a reply include it
            with self._condition:
                for ticket, outcome in zip(batch, results):
                    if isinstance(outcome, BaseException):
                        self._release(ticket, outcome)
                    elif outcome is None or not ticket.alive():
                        self._release(ticket, Abandoned())
                    else:
                        ticket.result = outcome
                        self._release(ticket)
                self._measured(batch, time.monotonic() - now)
