"""The poll loop: read a batch, store it in one transaction, then commit its offsets.

The offsets are committed only after the store committed, so a crash in between reads the batch
again, and the store's upsert by request id makes that repeat count once: every request is
stored exactly once whatever the recorder or the broker repeats. Any failure (broker or store)
drops the Kafka client and starts again from the last commit.
"""

from __future__ import annotations

import logging
import threading

from google.protobuf.message import DecodeError
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from dynaseal.backoff import Backoff
from dynaseal.pb import UsageEvent
from dynaseal.usage import kafka_io
from dynaseal.usage_store.recording import record
from usage_recorder import metrics

log = logging.getLogger("usage_recorder")
DEFAULT_GROUP_ID = "dynaseal-usage-store"
POLL_MS = 200
# Broker or store away: read again from the last commit after 0.25 s, doubling up to 2 s, full jitter.
RETRY_BACKOFF = Backoff(0.25, 2.0)


def decode(records: list[ConsumerRecord]) -> list[UsageEvent]:
    """The events of a batch; an undecodable record is counted and skipped (it has no request id to store)."""
    events = []
    for item in records:
        try:
            events.append(UsageEvent.FromString(item.value))
        except (DecodeError, TypeError):  # not protobuf, or no value at all (a tombstone)
            metrics.RECORDS.labels("undecodable").inc()
    return events


class Recorder:
    """Consumes the usage topic into the store until `stop`."""

    def __init__(self, engine: Engine, bootstrap: str, group_id: str, client_id: str,
                 session_timeout_ms: int = kafka_io.SESSION_TIMEOUT_MS,
                 heartbeat_interval_ms: int = kafka_io.HEARTBEAT_INTERVAL_MS) -> None:
        self.engine = engine
        self.bootstrap = bootstrap
        self.group_id = group_id
        self.client_id = client_id
        self.session_timeout_ms = session_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.stopping = threading.Event()

    def stop(self) -> None:
        """Stop after the batch in hand (safe from a signal handler)."""
        self.stopping.set()

    def run(self) -> None:
        """Consume until stopped, starting again from the last commit after any failure."""
        retries = RETRY_BACKOFF.retries()
        while not self.stopping.is_set():
            if not kafka_io.wait_for_topics(self.bootstrap, self.stopping):
                return
            consumer = None
            try:
                consumer = kafka_io.new_consumer(self.bootstrap, self.group_id, self.client_id,
                                                 session_timeout_ms=self.session_timeout_ms,
                                                 heartbeat_interval_ms=self.heartbeat_interval_ms)
                consumer.subscribe([kafka_io.USAGE_TOPIC])
                retries.reset()  # the broker answered: a later failure starts from the shortest wait
                self._consume(consumer)
            except KafkaError as exc:
                log.warning("broker error; reading again from the last commit", extra={"error": str(exc)})
                self.stopping.wait(retries.next_delay())
            except SQLAlchemyError as exc:
                metrics.STORE_ERRORS.inc()
                log.warning("usage store error; reading again from the last commit",
                            extra={"error": type(exc).__name__})
                self.stopping.wait(retries.next_delay())
            finally:
                kafka_io.close_quietly(consumer)

    def _consume(self, consumer: KafkaConsumer) -> None:
        while not self.stopping.is_set():
            polled = consumer.poll(timeout_ms=POLL_MS)
            if not polled:
                continue
            batch = [item for records in polled.values() for item in records]
            events = decode(batch)
            stored = record(self.engine, events)
            metrics.RECORDS.labels("stored").inc(stored)
            metrics.RECORDS.labels("repeat").inc(len(events) - stored)
            offsets = {TopicPartition(tp.topic, tp.partition): OffsetAndMetadata(records[-1].offset + 1, "", -1)
                       for tp, records in polled.items()}
            consumer.commit(offsets)
