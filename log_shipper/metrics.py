"""Prometheus metrics of the shipper: how far behind the access log it is, what it produced, what failed."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

LINES = Counter("dynaseal_shipper_lines_total", "Access-log lines read (again when resent), by what they became",
                ["result"])
EVENTS_PRODUCED = Counter("dynaseal_shipper_events_produced_total", "Usage events acknowledged by the broker")
PRODUCE_ERRORS = Counter("dynaseal_shipper_produce_errors_total", "Batches the broker did not acknowledge (resent)")
LAG_BYTES = Gauge("dynaseal_shipper_lag_bytes", "Access-log bytes after the last acknowledged line")
LAG_LINES = Gauge("dynaseal_shipper_lag_lines", "Access-log lines after the last acknowledged line")
LAG_SECONDS = Gauge("dynaseal_shipper_lag_seconds",
                    "Age of the oldest line the broker has not acknowledged (from its ts), 0 when none")
UNCONSUMED_SECONDS = Gauge("dynaseal_shipper_unconsumed_seconds",
                           "Age of the oldest acknowledged event the consumer group has not committed (kept to resend)")
BROKER_UP = Gauge("dynaseal_shipper_broker_connected", "1 while the producer is connected and acknowledging")
BROKER_RESETS = Counter("dynaseal_shipper_broker_resets_total",
                        "Times the broker had lost acknowledged records and the shipper produced them again")
LOG_RESTARTS = Counter("dynaseal_shipper_log_restarts_total",
                       "Times reading started over at a file's start, by reason (truncated, checkpoint_lost)",
                       ["reason"])
ROTATIONS = Counter("dynaseal_shipper_rotations_total", "Size-based rotations of the access log")
