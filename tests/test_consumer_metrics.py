"""The consumer's in-flight gauge: it counts what is being handled, and reads 0 once the work drained."""

from __future__ import annotations

import asyncio
import threading

from kafka import TopicPartition
from pipeline_harness import wait_until
from prometheus_client import REGISTRY

from callback_consumer.delivery import Job, Outcome
from callback_consumer.dispatcher import Dispatcher

IN_FLIGHT = "dynaseal_consumer_in_flight"


class _HeldDeliverer:
    """Finishes every job at once when released: all tasks complete in the same loop iteration."""

    def __init__(self, release: threading.Event) -> None:
        self.release = release
        self.started = 0

    async def handle(self, job: Job) -> Outcome:
        """Wait for the release, then report a delivery."""
        self.started += 1
        while not self.release.is_set():
            await asyncio.sleep(0.01)
        return Outcome.DELIVERED

    async def aclose(self) -> None:
        """Nothing to close."""


def _gauge() -> float:
    value = REGISTRY.get_sample_value(IN_FLIGHT)
    assert value is not None
    return value


def test_in_flight_counts_held_jobs_and_returns_to_zero_after_a_burst() -> None:
    release = threading.Event()
    held = _HeldDeliverer(release)
    finished: list[tuple[Job, Outcome]] = []
    dispatcher = Dispatcher(lambda abandon: held,  # type: ignore[arg-type,return-value]
                            on_finished=lambda job, outcome: finished.append((job, outcome)))
    dispatcher.start()
    try:
        tp = TopicPartition("dynaseal.usage.v1", 0)
        _spawn(dispatcher, [Job(tp, offset, None, b"") for offset in range(200)])
        _spawn(dispatcher, [Job(tp, offset, None, b"") for offset in range(200, 250)])
        wait_until(lambda: held.started == 250, 10, "every job to start")
        assert _gauge() == 250
        release.set()
        wait_until(lambda: len(finished) == 250, 10, "every job to finish")
        # The gauge is exact once the last job reported: no scrape may see stale work.
        assert _gauge() == 0 and dispatcher.in_flight == 0
    finally:
        dispatcher.drain(2)


def test_in_flight_is_zero_after_shutdown_cancels_held_jobs() -> None:
    release = threading.Event()
    held = _HeldDeliverer(release)
    dispatcher = Dispatcher(lambda abandon: held)  # type: ignore[arg-type,return-value]
    dispatcher.start()
    tp = TopicPartition("dynaseal.usage.v1", 1)
    _spawn(dispatcher, [Job(tp, offset, None, b"") for offset in range(20)])
    wait_until(lambda: held.started == 20, 10, "every job to start")
    dispatcher.drain(0.2)  # never released: the drain cancels them
    assert _gauge() == 0 and dispatcher.in_flight == 0


def _spawn(dispatcher: Dispatcher, jobs: list[Job]) -> None:
    """Hand jobs to the delivery loop as the consumer does, from a coroutine running on it."""
    async def spawn() -> None:
        dispatcher.spawn(jobs)

    dispatcher.run(spawn)
