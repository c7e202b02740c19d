"""log_shipper: tails Envoy's JSON access log and produces one usage event per admitted request to Kafka.

The file offset is checkpointed only after the broker acknowledged every event before it, so a
crash or a broker outage repeats events (idempotent downstream by request_id) and never loses one.
"""
