"""Prometheus metrics of the authz service; the decision code is the label."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

DECISIONS = Counter("dynaseal_authz_decisions_total", "Check decisions", ["result", "code"])
CHECK_SECONDS = Histogram(
    "dynaseal_authz_check_seconds", "Check latency inside the service",
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
# Every decision that failed closed, by reason (redis_error, redis_late, duplicate_request_id, internal_error, ...).
FAILURES = Counter("dynaseal_authz_failures_total", "Decisions that failed closed (503), by reason", ["reason"])
REDIS_ERRORS = Counter("dynaseal_authz_redis_errors_total", "Redis failures seen while deciding")
CONFIG_RELOADS = Counter("dynaseal_authz_config_reloads_total", "Config reloads", ["result"])
# Requests refused by a tenant's content rule; both labels are bounded by the config (tenants, rule names).
CONTENT_BLOCKED = Counter("dynaseal_authz_content_blocked_total", "Requests refused by a content rule",
                          ["tenant", "rule"])
