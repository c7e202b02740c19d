"""callback_consumer: a Kafka consumer group that settles reservations and delivers signed usage callbacks.

Offsets are committed per partition, in order, only after an event was delivered (2xx) or put on
the DLQ, so a crash repeats callbacks (same webhook-id) and never drops one.
"""
