"""`dynaseal status`: how far behind each pipeline stage is, and what waits for a person.

Printed from what the running services export and what Redis and Kafka hold, so it works against
`dynaseal up` or a deployment alike (the services' metrics at the config's ports):
- shipper: access-log bytes and lines not yet acknowledged by the broker, and their age;
- consumer: the group's lag per partition (committed offset to high-water mark, from Kafka), events
  in flight and held behind a slow tenant, callback latency and event age (p50/p99, from the histograms);
- ledger: the age of the oldest unsettled reservation (Redis);
- parked events per tenant (waiting for their receiver), DLQ entries by reason.
Exit 0 always when it could read the config (a stage that does not answer is shown as such).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from collections import Counter
from collections.abc import Iterable

import httpx
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from prometheus_client.parser import text_string_to_metric_families
from redis.exceptions import RedisError

from dynaseal.config import ConfigError, DynasealConfig, load_config
from dynaseal.ledger.redis_async import AsyncLedgerRedis, connect
from dynaseal.ledger.reservation_age import oldest_open_reservation_age_s
from dynaseal.runtime.locations import redis_url
from dynaseal.runtime.views import Runtime
from dynaseal.usage import kafka_io

Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(url: str) -> Samples | None:
    """Every sample of a Prometheus endpoint by name; None if it does not answer."""
    try:
        text = httpx.get(url, timeout=2).text
    except httpx.HTTPError:
        return None
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def total(samples: Samples, name: str) -> float:
    """Sum of a metric's samples."""
    return sum(value for _, value in samples.get(name, []))


def quantile(samples: Samples, name: str, q: float) -> float | None:
    """A quantile of a histogram (summed over labels), read off its buckets (upper bound of the bucket)."""
    buckets: dict[float, float] = {}
    for labels, value in samples.get(f"{name}_bucket", []):
        buckets[float(labels["le"])] = buckets.get(float(labels["le"]), 0.0) + value
    if not buckets or buckets.get(math.inf, 0.0) == 0:
        return None
    rank = q * buckets[math.inf]
    for bound in sorted(buckets):
        if buckets[bound] >= rank:
            return bound
    return None


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else ("> 300 s" if math.isinf(seconds) else f"≤ {seconds * 1000:g} ms")


def group_lag(bootstrap: str, group_id: str, topic: str) -> dict[int, int] | None:
    """Per partition: high-water mark minus the group's committed offset (what the group has not finished)."""
    try:
        consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False,
                                 bootstrap_timeout_ms=kafka_io.BOOTSTRAP_TIMEOUT_MS, consumer_timeout_ms=1000)
    except KafkaError:
        return None
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not partitions:
            return {}
        consumer.assign(partitions)
        ends = _highwater(consumer, partitions)
        lag = {}
        for tp in partitions:
            committed = consumer.committed(tp) or 0
            lag[tp.partition] = max(0, ends.get(tp, committed) - committed)
        return lag
    finally:
        kafka_io.close_quietly(consumer)


def _highwater(consumer: KafkaConsumer, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
    # The fetch high-water mark, not end_offsets(): the dev broker answers ListOffsets wrongly.
    wanted = list(partitions)
    for tp in wanted:
        consumer.seek(tp, 0)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        consumer.poll(timeout_ms=200, max_records=1)
        ends = {tp: consumer.highwater(tp) for tp in wanted}
        if all(end is not None for end in ends.values()):
            return {tp: int(end) for tp, end in ends.items() if end is not None}
    return {}


def dlq_reasons(bootstrap: str, max_entries: int = 1_000_000) -> Counter[str] | None:
    """DLQ entries by `dlq_reason` (its first word), the whole topic."""
    try:
        consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=1500,
                                 bootstrap_timeout_ms=kafka_io.BOOTSTRAP_TIMEOUT_MS)
    except KafkaError:
        return None
    try:
        partitions = [TopicPartition(kafka_io.DLQ_TOPIC, p)
                      for p in sorted(consumer.partitions_for_topic(kafka_io.DLQ_TOPIC) or ())]
        reasons: Counter[str] = Counter()
        if not partitions:
            return reasons
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        for seen, record in enumerate(consumer, start=1):
            reason = dict(record.headers).get("dlq_reason", b"") or b""
            reasons[reason.decode(errors="replace").split(":")[0] or "unknown"] += 1
            if seen >= max_entries:
                break
        return reasons
    finally:
        kafka_io.close_quietly(consumer)


PARKED_PREFIX, PARKED_SUFFIX = "dynaseal:v2:{cb:", "}:parked"


async def parked_by_tenant(client: AsyncLedgerRedis) -> dict[str, int]:
    """Parked events per tenant (their counters in Redis, on every master of a cluster)."""
    out = {}
    async for name in client.scan_iter(f"{PARKED_PREFIX}*{PARKED_SUFFIX}"):
        value = await client.execute_on(name, "GET", name)
        out[name[len(PARKED_PREFIX):-len(PARKED_SUFFIX)]] = int(value) if isinstance(value, bytes | str) else 0
    return out


async def _ledger(url: str, reservation_ttl_ms: int) -> tuple[float, dict[str, int]]:
    """The ledger's oldest open reservation and the parked counts, read with the services' asyncio client
    (a one-shot command: one loop, one client, closed after)."""
    client = connect(url, timeout_s=5.0)
    try:
        age = await oldest_open_reservation_age_s(client, reservation_ttl_ms=reservation_ttl_ms)
        return age, await parked_by_tenant(client)
    finally:
        await client.aclose()


def report(cfg: DynasealConfig, group_id: str) -> list[str]:
    """The status lines."""
    host, ports = cfg.gateway.host, cfg.gateway.ports
    bootstrap = Runtime.from_config(cfg).kafka.value
    lines = []
    shipper = scrape(f"http://{host}:{ports.shipper_metrics}/metrics")
    if shipper is None:
        lines.append("shipper     not answering")
    else:
        lines.append(f"shipper     behind: {total(shipper, 'dynaseal_shipper_lag_bytes'):.0f} bytes, "
                     f"{total(shipper, 'dynaseal_shipper_lag_lines'):.0f} lines, "
                     f"{total(shipper, 'dynaseal_shipper_lag_seconds'):.1f} s")
    lag = group_lag(bootstrap, group_id, kafka_io.USAGE_TOPIC)
    if lag is None:
        lines.append("consumer    broker not answering")
    else:
        per = " ".join(f"p{p}={n}" for p, n in sorted(lag.items()))
        lines.append(f"consumer    lag (group {group_id}): {sum(lag.values())} events [{per}]")
    consumer = scrape(f"http://{host}:{ports.consumer_metrics}/metrics")
    if consumer is None:
        lines.append("            metrics not answering")
    else:
        lines.append(f"            in flight {total(consumer, 'dynaseal_consumer_in_flight'):.0f}, held behind a slow "
                     f"tenant {total(consumer, 'dynaseal_consumer_held_back'):.0f}, paused partitions "
                     f"{total(consumer, 'dynaseal_consumer_paused_partitions'):.0f}")
        attempt, event_age = "dynaseal_consumer_callback_seconds", "dynaseal_consumer_event_age_seconds"
        lines.append(f"receiver    callback latency p50 {_ms(quantile(consumer, attempt, .5))}, "
                     f"p99 {_ms(quantile(consumer, attempt, .99))}; event age (log line to 2xx) "
                     f"p50 {_ms(quantile(consumer, event_age, .5))}, p99 {_ms(quantile(consumer, event_age, .99))}")
    try:
        age, parked = asyncio.run(_ledger(redis_url(cfg), int(cfg.gateway.reservation_ttl_s * 1000)))
        lines.append(f"ledger      oldest unsettled reservation: {age:.1f} s "
                     f"(billed and reported at {cfg.gateway.reservation_ttl_s:g} s)")
        lines.append("parked      " + (", ".join(f"{t}: {n}" for t, n in sorted(parked.items())) or "none"))
    except RedisError as exc:
        lines.append(f"ledger      Redis not answering ({type(exc).__name__})")
    reasons = dlq_reasons(bootstrap)
    if reasons is None:
        lines.append("dlq         broker not answering")
    else:
        by = ", ".join(f"{r}: {n}" for r, n in reasons.most_common())
        lines.append(f"dlq         {sum(reasons.values())} entries" + (f" ({by})" if by else ""))
    # Which config generation (tenant store: dynaseal.tenancy) each service runs: equal once a change is taken.
    running = {name: scrape(f"http://{host}:{port}/metrics") for name, port in (
        ("authz", ports.authz_metrics), ("consumer", ports.consumer_metrics), ("shipper", ports.shipper_metrics))}
    lines.append("config      generation: " + ", ".join(
        f"{name} {total(samples, 'dynaseal_config_generation'):.0f}" if samples is not None else f"{name} ?"
        for name, samples in running.items()))
    return lines


def main(argv: list[str] | None = None) -> int:
    """Print the pipeline's status."""
    parser = argparse.ArgumentParser(prog="dynaseal status", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="config file (default: $DYNASEAL_CONFIG or dynaseal.yaml)")
    parser.add_argument("--group-id", default=kafka_io.DEFAULT_GROUP_ID, help="the consumer group (%(default)s)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"dynaseal status: {exc}", file=sys.stderr)
        return 2
    for line in report(cfg, args.group_id):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
