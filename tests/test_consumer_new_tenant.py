"""A tenant created through the admin API may be admitted by authz a moment before a consumer loads it:
its first events wait for the consumer's next config load instead of going to the DLQ."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from types import MappingProxyType

from kafka import TopicPartition

from callback_consumer.delivery import Deliverer, Job, Outcome, RetryPolicy
from dynaseal.pb import UsageEvent
from dynaseal.runtime.views import CallbackTarget, ConsumerView


class FakeDeadLetters:
    """Records what would have gone to the DLQ."""

    def __init__(self) -> None:
        self.published: list[dict[str, str]] = []

    def publish(self, key: bytes | None, value: bytes, headers: dict[str, str]) -> bool:
        self.published.append(headers)
        return True


def view(*tenants: str) -> ConsumerView:
    """Tenants without a callback (their events need no HTTP)."""
    return ConsumerView(MappingProxyType({t: CallbackTarget(t, None, None) for t in tenants}), "redis://-", "-")


def deliver_while(config_after_s: float | None, wait_s: float) -> tuple[Outcome, FakeDeadLetters]:
    """Deliver one event of tenant `fresh`, which the consumer's config gains after `config_after_s`."""
    current = {"view": view("old")}
    dead = FakeDeadLetters()
    event = UsageEvent(tenant="fresh", jti="j1", request_id="r1")
    job = Job(TopicPartition("dynaseal.usage.v1", 0), 1, b"j1", event.SerializeToString())

    async def run() -> Outcome:
        deliverer = Deliverer(lambda: current["view"], None, dead,  # type: ignore[arg-type]
                              executor, RetryPolicy(), 4, asyncio.Event())
        deliverer.unknown_tenant_wait_s = wait_s
        if config_after_s is not None:
            asyncio.get_running_loop().call_later(config_after_s, current.update, {"view": view("old", "fresh")})
        return await deliverer.deliver(job, event)

    with ThreadPoolExecutor(2) as executor:
        return asyncio.run(run()), dead


def test_an_event_of_a_tenant_the_next_config_load_brings_is_delivered_not_dead_lettered() -> None:
    outcome, dead = deliver_while(config_after_s=0.5, wait_s=3.0)
    assert outcome == Outcome.NO_CALLBACK and dead.published == []


def test_an_event_of_a_tenant_no_config_has_still_goes_to_the_dlq() -> None:
    outcome, dead = deliver_while(config_after_s=None, wait_s=0.5)
    assert outcome == Outcome.DLQ
    assert len(dead.published) == 1 and "unknown_tenant" in str(dead.published[0])


def test_without_a_wait_the_unknown_tenant_is_dead_lettered_at_once() -> None:
    outcome, _ = deliver_while(config_after_s=0.5, wait_s=0.0)
    assert outcome == Outcome.DLQ

