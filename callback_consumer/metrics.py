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

# Money and tokens, named after the OpenTelemetry GenAI semantic conventions where they fit
# (`gen_ai.client.token.usage` → `gen_ai_client_token_usage`, attributes `gen_ai.token.type`,
# `gen_ai.request.model`, `gen_ai.operation.name`). Counted once per event this process finished.
# The histogram keeps the conventions' meaning of the token types (input =
# prompt tokens, output = completion tokens); the counters below split them by price line instead:
# input (uncached), cached_input, output (not reasoning), reasoning — these add up to the total.
_MODEL_LABELS = ["tenant", "gen_ai_request_model"]
TOKEN_USAGE = Histogram(
    "gen_ai_client_token_usage", "Tokens used per request (OpenTelemetry GenAI), by token type",
    [*_MODEL_LABELS, "gen_ai_operation_name", "gen_ai_token_type"],
    buckets=(1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864),
)
TOKENS = Counter("dynaseal_tokens", "Tokens the upstream reported, by price line",
                 [*_MODEL_LABELS, "gen_ai_token_type"])
COST = Counter("dynaseal_cost", "Cost settled, in currency units, by price line ('reserved': usage unknown, "
               "billed at the reservation)", [*_MODEL_LABELS, "gen_ai_token_type", "currency"])
UNPRICED = Counter("dynaseal_unpriced_requests", "Requests settled for a model without a price", _MODEL_LABELS)
# Group membership churn: a steady rise means members keep joining and leaving (crash loops,
# session timeouts), and partitions stall while they move.
REBALANCES = Counter("dynaseal_consumer_rebalances_total", "Partition assignments changed for this member",
                     ["event"])
ASSIGNED_PARTITIONS = Gauge("dynaseal_consumer_assigned_partitions", "Partitions this member owns")
BUDGET_THRESHOLDS = Counter("dynaseal_budget_thresholds", "Budget threshold callbacks finished, by budget and outcome",
                            ["tenant", "budget", "outcome"])
HELD_BACK = Gauge("dynaseal_consumer_held_back",
                  "Events queued behind a slow tenant's full backlog (their partitions are paused)")
PAUSED_PARTITIONS = Gauge("dynaseal_consumer_paused_partitions",
                          "Partitions paused because a slow tenant's events are queued from them")
RESERVATION_NOTICES = Counter("dynaseal_consumer_reservation_notices_total",
                              "Expired, unsettled reservations produced as usage events (usage_source reservation)")
PARKED = Counter("dynaseal_consumer_parked_total", "Events parked for a tenant whose receiver was failing")
REPLAYED = Counter("dynaseal_consumer_parked_replayed_total", "Parked events taken off the parked topic, by outcome",
                   ["outcome"])
BATCHES = Counter("dynaseal_consumer_callback_batches_total",
                  "Batched callback requests, by how many of their events were acknowledged", ["result"])
