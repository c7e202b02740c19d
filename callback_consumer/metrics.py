"""Prometheus metrics of the consumer: lag, deliveries by outcome, retries, DLQ, callback latency."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LAG = Gauge("dynaseal_consumer_lag", "Events after the committed offset (from the fetch high-water mark)",
            ["partition"])
LAG_TOTAL = Gauge("dynaseal_consumer_lag_total", "Events after the committed offsets, all owned partitions")
IN_FLIGHT = Gauge("dynaseal_consumer_in_flight", "Events handed to delivery and not yet done")
DELIVERIES = Counter("dynaseal_consumer_deliveries_total", "Events finished, by outcome", ["outcome"])
RETRIES = Counter("dynaseal_consumer_callback_retries_total", "Callback attempts that will be retried", ["reason"])
DLQ = Counter("dynaseal_consumer_dlq_total", "Events written to the DLQ topic", ["reason"])
OLDEST_RESERVATION_SECONDS = Gauge(
    "dynaseal_consumer_oldest_reservation_seconds",
    "Age of the oldest reservation no usage event has settled yet (0 when none is open)")
SETTLE_ERRORS = Counter("dynaseal_consumer_settle_errors_total", "Redis settlement attempts that failed")
CALLBACK_SECONDS = Histogram(
    "dynaseal_consumer_callback_seconds", "Duration of one callback HTTP attempt", ["result"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
EVENT_AGE_SECONDS = Histogram(
    "dynaseal_consumer_event_age_seconds", "From the shipper reading the log line to the callback's 2xx",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)
