"""The dead-letter queue: events that cannot be delivered go to `dynaseal.usage.v1.dlq`, acknowledged."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping

from kafka import KafkaProducer
from kafka.errors import KafkaError

from dynaseal.backoff import Backoff
from dynaseal.redaction import redact, redact_bytes
from dynaseal.usage import kafka_io

log = logging.getLogger("callback_consumer.dlq")
SEND_TIMEOUT_S = 15.0
# A broker away: the write is retried from 0.5 s, doubling up to 5 s, full jitter.
RETRY_BACKOFF = Backoff(0.5, 5.0)


class DeadLetters:
    """Publishes to the DLQ topic from any thread; a failed send recreates the producer and tries again."""

    def __init__(self, bootstrap: str, client_id: str, abandon: threading.Event) -> None:
        self.bootstrap = bootstrap
        self.client_id = client_id
        # Set at shutdown: stop retrying, the event stays uncommitted and is read again later.
        self.abandon = abandon
        self._lock = threading.Lock()
        self._producer: KafkaProducer | None = None

    def _current(self) -> KafkaProducer:
        with self._lock:
            if self._producer is None:
                kafka_io.ensure_topics(self.bootstrap)
                self._producer = kafka_io.new_producer(self.bootstrap, f"{self.client_id}-dlq", linger_ms=0)
            return self._producer

    def _discard(self, producer: KafkaProducer | None) -> None:
        with self._lock:
            if producer is not None and self._producer is producer:
                self._producer = None
        kafka_io.close_quietly(producer, timeout_s=0)

    def publish(self, key: bytes | None, value: bytes, headers: dict[str, str],
                topic: str = kafka_io.DLQ_TOPIC) -> bool:
        """Write one record (to the DLQ, or `topic`) and wait for the broker's acknowledgement; False if
        shutdown stopped the retries."""
        retries = RETRY_BACKOFF.retries()
        encoded = [(name, redact(text).encode()) for name, text in headers.items()]
        # What leaves the process is redacted like a log line; masking keeps the protobuf's length framing.
        value = redact_bytes(value)
        while True:
            producer = None
            try:
                producer = self._current()
                producer.send(topic, key=key, value=value, headers=encoded).get(timeout=SEND_TIMEOUT_S)
                return True
            except KafkaError as exc:
                log.warning("DLQ write failed; retrying with a new producer", extra={"error": str(exc)})
                self._discard(producer)
                if self.abandon.wait(retries.next_delay()):
                    return False

    def close(self) -> None:
        """Flush and close the producer."""
        with self._lock:
            producer, self._producer = self._producer, None
        kafka_io.close_quietly(producer, timeout_s=5)


def dlq_headers(reason: str, status: int | None, attempts: int, source: str,
                previous: Mapping[str, str] | None = None) -> dict[str, str]:
    """Why an event is dead-lettered, for whoever replays the DLQ.

    `previous` are the headers it had in the DLQ when a replay failed again: the entry keeps its
    original source and first reason, and counts its replays.
    """
    headers = {"dlq_reason": reason, "dlq_status": "" if status is None else str(status),
               "dlq_attempts": str(attempts), "dlq_source": source, "dlq_at_ms": str(int(time.time() * 1000))}
    if previous is not None:
        headers["dlq_source"] = previous.get("dlq_source") or source
        headers["dlq_first_reason"] = previous.get("dlq_first_reason") or previous.get("dlq_reason", "")
        replays = previous.get("dlq_replays", "0")
        headers["dlq_replays"] = str((int(replays) if replays.isdigit() else 0) + 1)
    return headers
