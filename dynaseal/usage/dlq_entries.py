"""The DLQ as the operator sees it: every entry with why it is there, and one entry replayed on request.

Reading assigns the DLQ's partitions without a consumer group and reads from the oldest record to
the high-water mark taken from the fetches (the dev broker answers ListOffsets wrongly): nothing is
committed, so `dynaseal dlq replay` keeps its own position. Replaying one entry puts its event back
on the usage topic, keyed as before: the callback consumer then delivers it as any event — signed
with the tenant's current secret, `webhook-id` = its request id, settlement idempotent per request
id, back on the DLQ with a new reason if it fails again. Whoever replays needs no webhook secret.
"""

from __future__ import annotations

import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from dynaseal.pb import UsageEvent
from dynaseal.usage import kafka_io

READ_DEADLINE_S = 10.0
MAX_ENTRIES = 5_000
# A threshold callback's DLQ entry holds the event that reported it, not a usage callback to send again.
THRESHOLD_TYPE = "budget_threshold"
REPLAY_HEADER = "dlq_replay_of"


@dataclass(frozen=True)
class DlqEntry:
    """One DLQ record: where it is, why it is there, and what it was about (never the content)."""

    partition: int
    offset: int
    headers: dict[str, str]
    event: UsageEvent | None

    @property
    def reason(self) -> str:
        """The reason it was dead-lettered last (`rejected:http_400`, `exhausted:...`, `unknown_tenant`...)."""
        return self.headers.get("dlq_reason", "") or "unknown"

    @property
    def replayable(self) -> bool:
        """Whether it is a usage callback this API can send again (decodable, not a threshold callback)."""
        return self.event is not None and self.headers.get("dlq_type", "") != THRESHOLD_TYPE

    def summary(self) -> dict[str, Any]:
        """The entry as the admin API lists it."""
        event = self.event
        about: dict[str, Any] = {}
        if event is not None:
            about = {"request_id": event.request_id, "tenant": event.tenant, "key_id": event.jti,
                     "model": event.model, "status": event.status, "total_tokens": event.total_tokens,
                     "usage_source": event.usage_source, "started_at": event.started_at}
        return {"id": f"{self.partition}:{self.offset}", "partition": self.partition, "offset": self.offset,
                "reason": self.reason, "first_reason": self.headers.get("dlq_first_reason") or self.reason,
                "receiver_status": self.headers.get("dlq_status", ""), "attempts": self.headers.get("dlq_attempts", ""),
                "replays": int(r) if (r := self.headers.get("dlq_replays", "0")).isdigit() else 0,
                "type": self.headers.get("dlq_type", "") or "usage",
                "dead_lettered_at_ms": self.headers.get("dlq_at_ms", ""),
                "replayable": self.replayable, **about}


def _entry(record: ConsumerRecord) -> DlqEntry:
    headers = {name: (value or b"").decode(errors="replace") for name, value in record.headers}
    try:
        event: UsageEvent | None = UsageEvent.FromString(record.value)
    except (DecodeError, TypeError):  # not protobuf, or no value at all
        event = None
    return DlqEntry(record.partition, record.offset, headers, event)


def _check_reachable(bootstrap: str, timeout_s: float = 2.0) -> None:
    """Raise ConnectionError unless one bootstrap server accepts a connection.

    Asked before any Kafka client is made: kafka-python leaves the sockets of a client whose bootstrap
    failed open, and waits its whole bootstrap timeout first; a down broker is an immediate answer here.
    """
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout_s):
                return
        except (OSError, ValueError):
            continue
    raise ConnectionError(f"no Kafka bootstrap server of {bootstrap!r} accepts connections")


def _reader(bootstrap: str) -> tuple[KafkaConsumer, list[TopicPartition]]:
    consumer = kafka_io.new_consumer(bootstrap, None, f"dynaseal-admin-dlq-{uuid.uuid4().hex[:8]}")  # type: ignore[arg-type]
    partitions = consumer.partitions_for_topic(kafka_io.DLQ_TOPIC) or {0}
    assigned = [TopicPartition(kafka_io.DLQ_TOPIC, p) for p in sorted(partitions)]
    consumer.assign(assigned)
    return consumer, assigned


def read_entries(bootstrap: str, limit: int = MAX_ENTRIES) -> list[DlqEntry]:
    """Every DLQ entry (at most `limit`, the oldest first per partition)."""
    _check_reachable(bootstrap)
    kafka_io.ensure_topics(bootstrap)
    consumer, assigned = _reader(bootstrap)
    try:
        consumer.seek_to_beginning(*assigned)
        entries: list[DlqEntry] = []
        deadline = time.monotonic() + READ_DEADLINE_S
        while time.monotonic() < deadline and len(entries) < limit:
            for batch in consumer.poll(timeout_ms=300).values():
                entries.extend(_entry(record) for record in batch)
            ends = {tp: consumer.highwater(tp) for tp in assigned}
            if all(end is not None and consumer.position(tp) >= end for tp, end in ends.items()):
                break
        return sorted(entries, key=lambda e: (e.partition, e.offset))[:limit]
    finally:
        kafka_io.close_quietly(consumer)


def read_entry(bootstrap: str, partition: int, offset: int) -> DlqEntry | None:
    """The entry at (partition, offset); None if there is none."""
    _check_reachable(bootstrap)
    kafka_io.ensure_topics(bootstrap)
    consumer, assigned = _reader(bootstrap)
    try:
        tp = TopicPartition(kafka_io.DLQ_TOPIC, partition)
        if tp not in assigned or offset < 0:
            return None
        consumer.assign([tp])
        consumer.seek(tp, offset)
        deadline = time.monotonic() + READ_DEADLINE_S
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=300).values():
                for record in batch:
                    if record.offset == offset:
                        return _entry(record)
                    if record.offset > offset:
                        return None
            end = consumer.highwater(tp)
            if end is not None and offset >= end:
                return None
        return None
    finally:
        kafka_io.close_quietly(consumer)


def replay(bootstrap: str, entry: DlqEntry, send_timeout_s: float = 15.0) -> None:
    """Put a replayable entry's event back on the usage topic and wait for the broker's acknowledgement."""
    if entry.event is None or not entry.replayable:
        raise ValueError("this DLQ entry cannot be replayed here")
    _check_reachable(bootstrap)
    producer = kafka_io.new_producer(bootstrap, "dynaseal-admin-replay", linger_ms=0)
    try:
        headers = [(REPLAY_HEADER, f"{kafka_io.DLQ_TOPIC}/{entry.partition}/{entry.offset}".encode())]
        producer.send(kafka_io.USAGE_TOPIC, key=entry.event.jti.encode(), value=entry.event.SerializeToString(),
                      headers=headers).get(timeout=send_timeout_s)
    finally:
        kafka_io.close_quietly(producer)
