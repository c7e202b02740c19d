"""Tell tenants about requests whose log line was lost: expired reservations become usage events.

A task on every consumer's delivery loop: every `interval_s` it has Redis bill the reservations whose
deadline passed (`expire_due`), claims expired ones (each id to one consumer of the group, with a
lease), produces their events to the usage topic (keyed by jti, like the shipper's) and drops each
claim once the broker acknowledged it. The Redis calls are awaited on the loop (the consumer's one
asyncio client); the produce runs on the consumer's Kafka executor, since kafka-python's producer
blocks until the broker acknowledges. A consumer killed in between leaves claims that lapse and are
taken again: the notice may then go out twice, with the same webhook-id.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor

from kafka import KafkaProducer
from kafka.errors import KafkaError
from redis.exceptions import RedisError

from callback_consumer import metrics
from dynaseal.ledger import expiry_notices
from dynaseal.ledger.expiry_notices import ExpiredReservation
from dynaseal.ledger.redis_async import AsyncLedgerRedis
from dynaseal.usage import kafka_io
from dynaseal.usage.reservation_events import reservation_event

log = logging.getLogger("callback_consumer.expiry")
LEASE_MS = 60_000
SEND_TIMEOUT_S = 15.0


class ExpirySweeper:
    """`await run()` on the delivery loop until cancelled; `close` the producer once the loop stopped."""

    def __init__(self, redis_client: AsyncLedgerRedis, bootstrap: str, currency_of: Callable[[str], str | None],
                 interval_s: float, client_id: str, executor: Executor) -> None:
        self.redis = redis_client
        self.bootstrap = bootstrap
        self.currency_of = currency_of
        self.interval_s = interval_s
        self.client_id = client_id
        self.executor = executor
        self._producer: KafkaProducer | None = None

    async def run(self) -> None:
        """Sweep every `interval_s`; a failed pass is retried by the next (its claims lapse)."""
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.sweep()
            except (RedisError, KafkaError) as exc:
                log.warning("expiry sweep failed; retrying", extra={"error": str(exc)})
                producer, self._producer = self._producer, None
                kafka_io.close_quietly(producer, timeout_s=0)

    def close(self) -> None:
        """Close the producer (after the loop stopped)."""
        kafka_io.close_quietly(self._producer, timeout_s=2)
        self._producer = None

    async def sweep(self) -> int:
        """One pass: expire, claim, produce, acknowledge; how many notices were produced."""
        await expiry_notices.expire_due(self.redis)
        claimed = await expiry_notices.claim(self.redis, LEASE_MS)
        if not claimed:
            return 0
        # A tenant this config does not serve has no callback to receive the notice (deleted, or another
        # deployment's keys in a shared Redis): drop its claims rather than fill the DLQ with them.
        unknown = [c for c in claimed if self.currency_of(c.tenant) is None]
        for expired in unknown:
            log.warning("expired reservation of a tenant not in the config: not reported",
                        extra={"tenant": expired.tenant, "request_id": expired.request_id})
            await expiry_notices.done(self.redis, expired)
        claimed = [c for c in claimed if self.currency_of(c.tenant) is not None]
        if not claimed:
            return 0
        await asyncio.get_running_loop().run_in_executor(self.executor, self._produce, claimed)
        for expired in claimed:
            await expiry_notices.done(self.redis, expired)
        metrics.RESERVATION_NOTICES.inc(len(claimed))
        log.info("expired reservations reported", extra={"count": len(claimed)})
        return len(claimed)

    def _produce(self, claimed: list[ExpiredReservation]) -> None:
        """Produce every notice and wait for the broker's acknowledgements (blocking: on the executor)."""
        if self._producer is None:
            self._producer = kafka_io.new_producer(self.bootstrap, f"{self.client_id}-expiry")
        sends = [self._producer.send(kafka_io.USAGE_TOPIC, key=c.jti.encode(),
                                     value=reservation_event(c, self.currency_of(c.tenant)).SerializeToString())
                 for c in claimed]
        for future in sends:
            future.get(timeout=SEND_TIMEOUT_S)
