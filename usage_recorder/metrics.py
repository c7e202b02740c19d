"""The recorder's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter

RECORDS = Counter("dynaseal_usage_recorder_records_total", "Usage-topic records read, by outcome",
                  ["outcome"])
STORE_ERRORS = Counter("dynaseal_usage_recorder_store_errors_total",
                       "Batches the store refused (read again from the last commit)")
