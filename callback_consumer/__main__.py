"""`python -m callback_consumer` / `dynaseal consumer`: settle usage and deliver callbacks until SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from types import FrameType

from prometheus_client import start_http_server
from redis.exceptions import RedisError

from callback_consumer.consumer import CallbackConsumer, ConsumerOptions
from callback_consumer.delivery import RetryPolicy
from callback_consumer.expiry_sweeper import ExpirySweeper
from callback_consumer.metrics import OLDEST_RESERVATION_SECONDS
from dynaseal.config import ConfigError
from dynaseal.ledger.quota import RESERVATION_TTL_MS
from dynaseal.ledger.redis_async import AsyncLedgerRedis
from dynaseal.ledger.reservation_age import oldest_open_reservation_age_s
from dynaseal.logs import setup_logging
from dynaseal.runtime.views import Runtime
from dynaseal.tenancy.source import TenancySource
from dynaseal.usage import kafka_io

GROUP_ENV = "DYNASEAL_CONSUMER_GROUP"
RESERVATION_SCAN_S = 15.0


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = argparse.ArgumentParser(prog="dynaseal consumer", description=__doc__)
    parser.add_argument("--config", help="config file (default: $DYNASEAL_CONFIG or dynaseal.yaml)")
    parser.add_argument("--group-id", default=os.environ.get(GROUP_ENV) or kafka_io.DEFAULT_GROUP_ID,
                        help=f"consumer group (default: ${GROUP_ENV} or %(default)s)")
    parser.add_argument("--metrics-port", type=int, help="default: ports.consumer_metrics")
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP, config)")
    parser.add_argument("--per-tenant", type=int, default=32, help="callbacks in flight per tenant")
    parser.add_argument("--tenant-backlog", type=int, default=5000,
                        help="events one tenant may hold in flight; past it new ones queue and their partitions pause")
    parser.add_argument("--retry-base-s", type=float, default=0.5, help="first retry delay (doubles each time)")
    parser.add_argument("--retry-cap-s", type=float, default=30.0, help="longest retry delay")
    parser.add_argument("--park-after", type=int, default=5,
                        help="failed attempts in a row after which a tenant's events are parked for automatic "
                             "replay (0: retry, then the DLQ)")
    parser.add_argument("--park-probe-s", type=float, default=2.0,
                        help="first wait before a parked tenant's receiver is tried again (doubles up to 30 s)")
    parser.add_argument("--expiry-sweep-s", type=float, default=10.0,
                        help="how often expired, unsettled reservations are looked for and reported (0: never)")
    parser.add_argument("--session-timeout-ms", type=int, default=kafka_io.SESSION_TIMEOUT_MS)
    parser.add_argument("--heartbeat-interval-ms", type=int, default=kafka_io.HEARTBEAT_INTERVAL_MS)
    return parser


async def watch_reservations(client: AsyncLedgerRedis, interval_s: float = RESERVATION_SCAN_S,
                             reservation_ttl_ms: int = RESERVATION_TTL_MS) -> None:
    """Keep the oldest-open-reservation gauge current (on the delivery loop, between deliveries)."""
    while True:
        try:
            OLDEST_RESERVATION_SECONDS.set(await oldest_open_reservation_age_s(
                client, reservation_ttl_ms=reservation_ttl_ms))
        except RedisError as exc:  # the gauge keeps its last value; settlement reports Redis itself
            logging.getLogger("dynaseal.consumer").debug("reservation scan failed: %s", exc)
        await asyncio.sleep(interval_s)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and consume until stopped."""
    args = build_parser().parse_args(argv)
    setup_logging("consumer")
    # kafka-python narrates every connection at INFO.
    logging.getLogger("kafka").setLevel(logging.WARNING)
    try:
        source = TenancySource(args.config)  # the file with the tenant store over it
        tenancy = source.load()
        source.accept(tenancy)
        runtime = Runtime.from_config(tenancy.cfg)
        cfg = runtime.cfg
        consumer = CallbackConsumer(ConsumerOptions(
            config_path=args.config, bootstrap=args.bootstrap or runtime.kafka.value,
            group_id=args.group_id, client_id=f"dynaseal-consumer-{socket.gethostname()}-{os.getpid()}",
            policy=RetryPolicy(args.retry_base_s, args.retry_cap_s), per_tenant=args.per_tenant,
            tenant_backlog=args.tenant_backlog, park_after=args.park_after, park_probe_s=args.park_probe_s,
            session_timeout_ms=args.session_timeout_ms, heartbeat_interval_ms=args.heartbeat_interval_ms),
            runtime.consumer(), source)  # the config is loaded once, here
    except ConfigError as exc:
        print(f"dynaseal consumer: {exc}", file=sys.stderr)
        return 2
    try:
        start_http_server(args.metrics_port or cfg.gateway.ports.consumer_metrics, addr=cfg.gateway.host)
    except OSError as exc:
        print(f"dynaseal consumer: cannot serve metrics: {exc}", file=sys.stderr)
        return 2

    def _stop(signum: int, frame: FrameType | None) -> None:
        consumer.stop()

    def _reload(signum: int, frame: FrameType | None) -> None:
        consumer.reload()

    ttl_ms = int(cfg.gateway.reservation_ttl_s * 1000)
    # Both on the delivery loop, on the consumer's one Redis client.
    consumer.dispatcher.beside(lambda: watch_reservations(consumer.redis, min(RESERVATION_SCAN_S, ttl_ms / 4000),
                                                          ttl_ms))
    sweeper = None
    if args.expiry_sweep_s > 0:
        currencies = {t.id: t.upstream.currency if t.upstream else "USD" for t in cfg.tenants}
        sweeper = ExpirySweeper(consumer.redis, consumer.options.bootstrap, currencies.get, args.expiry_sweep_s,
                                consumer.options.client_id, consumer.executor)
        consumer.dispatcher.beside(sweeper.run)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGHUP, _reload)
    consumer.run()
    if sweeper is not None:
        sweeper.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
