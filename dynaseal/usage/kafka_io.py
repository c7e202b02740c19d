"""Kafka plumbing both pipeline services share: topic names, bootstrap, topic creation, client settings.

The settings follow measurements against the local `tansu` broker with kafka-python 3
(`shared/reference/kafka-tansu-notes.md`): topics are always created with explicit partition
counts, group timeouts are short (a default 45 s session makes every join wait ~23 s), and an
idempotent producer is recreated after a fatal error (it never recovers from a broker restart).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
from kafka.errors import KafkaError, TopicAlreadyExistsError

from dynaseal.backoff import Backoff

log = logging.getLogger("dynaseal.kafka")

USAGE_TOPIC = "dynaseal.usage.v1"
DLQ_TOPIC = "dynaseal.usage.v1.dlq"
# Events of tenants whose receiver was failing, keyed by tenant, replayed automatically (callback_consumer.parking);
# created by the consumer that parks or replays (PARKED_PARTITIONS), not with the pipeline's topics.
PARKED_TOPIC = "dynaseal.usage.v1.parked"
PARKED_PARTITIONS = {PARKED_TOPIC: 6}
# Partitions bound how many consumers share the work (a member beyond the count sits idle); the
# DLQ is low-volume and read by people. Only a topic created here gets the count: an existing one
# keeps its own (add partitions with Kafka's tools; events are keyed by jti, any spread is fine).
USAGE_PARTITIONS_ENV = "DYNASEAL_USAGE_PARTITIONS"
DEFAULT_USAGE_PARTITIONS = 6
TOPIC_PARTITIONS = {USAGE_TOPIC: DEFAULT_USAGE_PARTITIONS, DLQ_TOPIC: 1}

# A broker away: consumers connect and poll again from 0.25 s, doubling up to 1 s, full jitter.
BROKER_BACKOFF = Backoff(0.25, 1.0)

def topic_partitions() -> dict[str, int]:
    """Partition counts of the topics to create: $DYNASEAL_USAGE_PARTITIONS for the usage topic, else 6."""
    raw = os.environ.get(USAGE_PARTITIONS_ENV, "").strip()
    count = int(raw) if raw.isdigit() and int(raw) > 0 else DEFAULT_USAGE_PARTITIONS
    return {**TOPIC_PARTITIONS, USAGE_TOPIC: count}
DEFAULT_GROUP_ID = "dynaseal-callbacks"
SESSION_TIMEOUT_MS = 6000
HEARTBEAT_INTERVAL_MS = 500
# Creating a client while the broker is down blocks this long before raising KafkaTimeoutError.
BOOTSTRAP_TIMEOUT_MS = 5000


def ensure_topics(bootstrap: str, partitions: dict[str, int] | None = None) -> list[str]:
    """Create the pipeline's topics that are missing, with explicit partition counts; return those created."""
    wanted = partitions or topic_partitions()
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
                             request_timeout_ms=10_000, client_id="dynaseal-admin")
    try:
        existing = set(admin.list_topics())
        created = []
        for name, count in wanted.items():
            if name in existing:
                continue
            try:
                # One topic per call: a batch fails as a whole when another service won the race.
                admin.create_topics([NewTopic(name, count, 1)])
                created.append(name)
            except TopicAlreadyExistsError:
                pass
        if created:
            log.info("created topics", extra={"topics": created})
        return created
    finally:
        admin.close()


def wait_for_topics(bootstrap: str, stopping: threading.Event | None = None, retry_s: float = 1.0) -> bool:
    """`ensure_topics` until it succeeds (the broker may still be starting); False if stopped first.

    Waits grow from a quarter of `retry_s` up to `retry_s`, full jitter: services started together
    do not knock on the broker in step.
    """
    retries = Backoff(retry_s / 4, retry_s).retries()
    while stopping is None or not stopping.is_set():
        try:
            ensure_topics(bootstrap)
            return True
        except KafkaError as exc:
            log.warning("broker not reachable; retrying topic creation", extra={"error": str(exc)})
            if stopping is None:
                time.sleep(retries.next_delay())
            else:
                stopping.wait(retries.next_delay())
    return False


def new_producer(bootstrap: str, client_id: str, **overrides: object) -> KafkaProducer:
    """An acks=all idempotent producer that gives up on a batch within seconds, not minutes."""
    settings: dict[str, object] = {
        "bootstrap_servers": bootstrap,
        "client_id": client_id,
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        "batch_size": 65536,
        "request_timeout_ms": 5000,
        # A batch not acked by then fails its futures; the caller rewinds and retries.
        "delivery_timeout_ms": 15_000,
        "max_block_ms": 10_000,
        "bootstrap_timeout_ms": BOOTSTRAP_TIMEOUT_MS,
        "reconnect_backoff_max_ms": 1000,
        # Topics are created explicitly with their partition counts, never by a first write.
        "allow_auto_create_topics": False,
    }
    settings.update(overrides)
    return KafkaProducer(**settings)


def group_settings(bootstrap: str, group_id: str, client_id: str) -> dict[str, object]:
    """What every group consumer of the pipeline shares, whichever client library reads."""
    return {
        "bootstrap_servers": bootstrap,
        "group_id": group_id,
        "client_id": client_id,
        "enable_auto_commit": False,
        # No committed offset (new group, or a dev broker that lost its state): start at the oldest record.
        "auto_offset_reset": "earliest",
        "session_timeout_ms": SESSION_TIMEOUT_MS,
        "heartbeat_interval_ms": HEARTBEAT_INTERVAL_MS,
        "max_poll_records": 500,
        # How long a fetch may wait for new records. Measured against the dev broker (bench/pipeline_bench):
        # end-to-end p50 ~175 ms at the default 500, ~50 ms at 100; waiting fetches are not always
        # answered as soon as records arrive. At 100 an idle consumer sends ~10 fetches/s.
        "fetch_max_wait_ms": 100,
        "max_poll_interval_ms": 60_000,
        "request_timeout_ms": 10_000,
    }


def new_consumer(bootstrap: str, group_id: str, client_id: str, **overrides: object) -> KafkaConsumer:
    """A manual-commit group consumer with short group timeouts, reading from the start when no offset exists."""
    settings: dict[str, object] = {
        **group_settings(bootstrap, group_id, client_id),
        "bootstrap_timeout_ms": BOOTSTRAP_TIMEOUT_MS,
        "reconnect_backoff_max_ms": 1000,
        "allow_auto_create_topics": False,
        # Incremental rebalancing (KIP-429): a member joining or leaving moves only the partitions
        # that change owner; the others keep being consumed, and are not read again from their
        # last commit (fewer repeats). kafka-python cannot mix it with an eager assignor: a rolling
        # upgrade from a version that used range restarts the group's members together.
        "partition_assignment_strategy": (CooperativeStickyAssignor,),
    }
    settings.update(overrides)
    return KafkaConsumer(**settings)


def new_aio_consumer(bootstrap: str, group_id: str, client_id: str, **overrides: object) -> Any:
    """`group_settings` for aiokafka's AIOKafkaConsumer (create it on the loop that will use it).

    Where aiokafka differs: no cooperative-sticky assignor (rebalances are eager: every member gives up its
    partitions, the caller commits what is finished before that), and no `allow_auto_create_topics` (it never
    asks for creation; `ensure_topics` creates the topics with their counts first). Its RoundRobin assignor,
    not its sticky one: that keeps its state on the class, so two members in one process confuse each other.
    """
    # Imported here: only the callback consumer reads with aiokafka; the other services never load it.
    from aiokafka import AIOKafkaConsumer  # type: ignore[import-untyped]
    from aiokafka.coordinator.assignors.roundrobin import (  # type: ignore[import-untyped]
        RoundRobinPartitionAssignor,
    )

    settings: dict[str, object] = {
        **group_settings(bootstrap, group_id, client_id),
        "partition_assignment_strategy": (RoundRobinPartitionAssignor,),
    }
    settings.update(overrides)
    return AIOKafkaConsumer(**settings)


def poll_until_stopped(consumer: KafkaConsumer, poll_once: Callable[[KafkaConsumer], object],
                       stopping: threading.Event, what: str, logger: logging.Logger = log) -> None:
    """Call `poll_once(consumer)` until `stopping` is set; a broker error waits BROKER_BACKOFF's next
    delay (reset by a poll that succeeds) and tries again."""
    retries = BROKER_BACKOFF.retries()
    while not stopping.is_set():
        try:
            poll_once(consumer)
            retries.reset()
        except KafkaError as exc:
            logger.warning(f"{what} failed; retrying", extra={"error": str(exc)})
            stopping.wait(retries.next_delay())


def close_quietly(client: KafkaProducer | KafkaConsumer | None, timeout_s: float = 2.0) -> None:
    """Close a client without raising (it may be broken or its broker gone)."""
    if client is None:
        return
    try:
        if isinstance(client, KafkaProducer):
            client.close(timeout=timeout_s)
        else:
            client.close(autocommit=False, timeout_ms=int(timeout_s * 1000))
    except Exception as exc:  # a broken client may raise anything while closing
        log.debug("error while closing a kafka client", extra={"error": str(exc)})


def resume(consumer: KafkaConsumer, partitions: Iterable[TopicPartition]) -> None:
    """Resume paused partitions so that they are fetched again, whatever kafka-python parked for them.

    kafka-python 3.0 parks records fetched for a paused partition and restores them on a later poll only
    when its in-line record slot is `None`; a drained slot is an empty object, not `None`, so once traffic
    stops a resumed partition's parked records were never restored, and the partition, counted as having
    data pending, was never fetched again (measured: 3,429 events stuck until a restart). Dropping the
    parked data loses nothing: it was never returned, the position is still at its first record, and
    the next fetch reads it again.
    """
    wanted = list(partitions)
    if not wanted:
        return
    consumer.resume(*wanted)
    fetcher = getattr(consumer, "_fetcher", None)
    for name in ("_paused_partition_records", "_paused_completed_fetches"):
        parked = getattr(fetcher, name, None)
        if isinstance(parked, dict):
            for tp in wanted:
                dropped = parked.pop(tp, None)
                drain = getattr(dropped, "drain", None)
                if callable(drain):
                    drain()
