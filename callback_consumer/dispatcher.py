"""The consumer's one asyncio loop, in its own thread: Kafka reads, deliveries and the work beside them.

The consumer's main coroutine runs on it (`run`), hands each fetched batch to delivery with `spawn` and hears
of every finished job through `on_finished`, all on this loop. `submit` and the `finished` queue serve a
caller on another thread (without `on_finished`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from callback_consumer import metrics
from callback_consumer.delivery import Deliverer, Job, Outcome

log = logging.getLogger("callback_consumer.dispatcher")


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a declared dependency on POSIX
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class Dispatcher:
    """Owns the delivery event loop; `drain` finishes what is in flight and stops it."""

    def __init__(self, make_deliverer: Callable[[asyncio.Event], Deliverer],
                 closing: Callable[[], Awaitable[None]] | None = None,
                 on_finished: Callable[[Job, Outcome], None] = lambda job, outcome: None) -> None:
        # Called on the loop as each job ends: no queue between threads.
        self._on_finished = on_finished
        self._drained = False
        self._make_deliverer = make_deliverer
        # Run on the loop after the deliveries drained (the Redis client's connections belong to this loop).
        self._closing = closing
        self._loop = _new_loop()
        self._tasks: set[asyncio.Task[None]] = set()
        # Counted, not len(self._tasks): a finished task leaves the set only in a later loop
        # callback, so a gauge set from the set's size stayed above 0 after a burst drained.
        self._in_flight = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="deliveries", daemon=True)
        self._abandon: asyncio.Event | None = None
        self._deliverer: Deliverer | None = None
        # Periodic work beside the deliveries, on the same loop (expiry sweeps, the reservation-age gauge).
        self._beside: list[Callable[[], Awaitable[None]]] = []
        self._background: list[asyncio.Task[None]] = []

    def beside(self, work: Callable[[], Awaitable[None]]) -> None:
        """Run `work()` on the delivery loop from `start` until `drain` (call before `start`)."""
        self._beside.append(work)

    def start(self) -> None:
        """Start the loop thread and wait until it accepts jobs."""
        self._thread.start()
        self._ready.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._abandon = asyncio.Event()
        self._deliverer = self._make_deliverer(self._abandon)
        self._background = [self._loop.create_task(self._forever(work)) for work in self._beside]
        self._loop.call_soon(self._ready.set)
        self._loop.run_forever()

    def run(self, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `main()` on the loop (after `start`) and wait until it returns; its exception is raised here."""
        asyncio.run_coroutine_threadsafe(main(), self._loop).result()

    def spawn(self, jobs: list[Job]) -> None:
        """Start delivering these jobs (on the loop only)."""
        for job in jobs:
            task = self._loop.create_task(self._one(job))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._in_flight += len(jobs)
        metrics.IN_FLIGHT.set(self._in_flight)

    @property
    def in_flight(self) -> int:
        """Jobs handed to the loop and not finished (cancelled ones included once they stop)."""
        return self._in_flight

    async def _one(self, job: Job) -> None:
        assert self._deliverer is not None
        try:
            try:
                outcome = await self._deliverer.handle(job)
            except Exception:
                # A bug, not a tenant problem: keep the event where a person will see it.
                log.exception("unexpected error handling an event", extra={"offset": job.offset})
                outcome = await self._deliverer.dead_letter_on_error(job)
            metrics.DELIVERIES.labels(outcome.value).inc()
            self._on_finished(job, outcome)
        finally:  # also when shutdown cancels it: the job is no longer in flight
            self._in_flight -= 1
            metrics.IN_FLIGHT.set(self._in_flight)

    @staticmethod
    async def _forever(work: Callable[[], Awaitable[None]]) -> None:
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except Exception:  # work that dies would silently stop (a sweep, a gauge): say so
            log.exception("background work on the delivery loop failed")

    async def drained(self, timeout_s: float) -> None:
        """On the loop: let in-flight deliveries finish (at most timeout_s), then close what they used (once)."""
        if self._drained:
            return
        self._drained = True
        assert self._abandon is not None and self._deliverer is not None
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._abandon.set()  # retries give up now; every job handed out still gets its first attempt
        pending = set(self._tasks)
        if pending:
            _, still = await asyncio.wait(pending, timeout=timeout_s)
            for task in still:
                task.cancel()
            if still:
                log.warning("deliveries cut off by shutdown; they will be redelivered", extra={"count": len(still)})
                await asyncio.wait(still, timeout=1.0)
        await self._deliverer.aclose()
        if self._closing is not None:
            await self._closing()

    def drain(self, timeout_s: float) -> None:
        """Let in-flight deliveries finish (at most timeout_s), then stop the loop and its thread."""
        if not self._thread.is_alive():
            return
        future = asyncio.run_coroutine_threadsafe(self.drained(timeout_s), self._loop)
        try:
            future.result(timeout_s + 5)
        except Exception:
            log.exception("error while draining deliveries")
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
