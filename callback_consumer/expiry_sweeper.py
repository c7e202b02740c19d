"""Tell tenants about requests whose log line was lost: expired reservations become usage events.

A daemon thread in every consumer: every `interval_s` it has Redis bill the reservations whose
deadline passed (`expire_due`), claims expired ones (each id to one consumer of the group, with a
lease), produces their events to the usage topic (keyed by jti, like the shipper's) and drops each
claim once the broker acknowledged it. A consumer killed in between leaves claims that lapse and
are taken again: the notice may then go out twice, with the same webhook-id.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from kafka import KafkaProducer
from kafka.errors import KafkaError
from redis.exceptions import RedisError

from callback_consumer import metrics
from dynaseal.ledger import expiry_notices
from dynaseal.ledger.redis_connect import SyncClient
from dynaseal.usage import kafka_io
from dynaseal.usage.reservation_events import reservation_event

log = logging.getLogger("callback_consumer.expiry")
LEASE_MS = 60_000
SEND_TIMEOUT_S = 15.0


class ExpirySweeper:
    """The loop; `stop` ends it."""

    def __init__(self, redis_client: SyncClient, bootstrap: str, currency_of: Callable[[str], str | None],
                 interval_s: float, client_id: str) -> None:
        self.redis = redis_client
        self.bootstrap = bootstrap
        self.currency_of = currency_of
        self.interval_s = interval_s
        self.client_id = client_id
        self.stopping = threading.Event()
        self._producer: KafkaProducer | None = None
        self._thread = threading.Thread(target=self._run, name="expiry-sweeper", daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop after the current pass."""
        self.stopping.set()
        self._thread.join(SEND_TIMEOUT_S + 5)
        kafka_io.close_quietly(self._producer, timeout_s=2)

    def _run(self) -> None:
        while not self.stopping.wait(self.interval_s):
            try:
                self.sweep()
            except (RedisError, KafkaError) as exc:  # the claims lapse and the next pass retries
                log.warning("expiry sweep failed; retrying", extra={"error": str(exc)})
                kafka_io.close_quietly(self._producer, timeout_s=0)
                self._producer = None

    def sweep(self) -> int:
        """One pass: expire, claim, produce, acknowledge; how many notices were produced."""
        expiry_notices.expire_due(self.redis)
        claimed = expiry_notices.claim(self.redis, LEASE_MS)
        if not claimed:
            return 0
        # A tenant this config does not serve has no callback to receive the notice (deleted, or another
        # deployment's keys in a shared Redis): drop its claims rather than fill the DLQ with them.
        unknown = [c for c in claimed if self.currency_of(c.tenant) is None]
        for expired in unknown:
            log.warning("expired reservation of a tenant not in the config: not reported",
                        extra={"tenant": expired.tenant, "request_id": expired.request_id})
            expiry_notices.done(self.redis, expired)
        claimed = [c for c in claimed if self.currency_of(c.tenant) is not None]
        if not claimed:
            return 0
        if self._producer is None:
            self._producer = kafka_io.new_producer(self.bootstrap, f"{self.client_id}-expiry")
        sends = [(c, self._producer.send(kafka_io.USAGE_TOPIC, key=c.jti.encode(),
                                         value=reservation_event(c, self.currency_of(c.tenant)).SerializeToString()))
                 for c in claimed]
        for expired, future in sends:
            future.get(timeout=SEND_TIMEOUT_S)
            expiry_notices.done(self.redis, expired)
        metrics.RESERVATION_NOTICES.inc(len(sends))
        log.info("expired reservations reported", extra={"count": len(sends)})
        return len(sends)
