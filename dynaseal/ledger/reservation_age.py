"""How old the oldest open reservation is: a reservation that is never settled means a lost usage event.

Every admitted request holds a reservation until its usage event settles it (usually well under a
second). One that stays open for minutes points at a lost access-log line, a stuck shipper or a
broken consumer, long before the 15-minute expiry bills it in full. The value is found by scanning
the reservation deadlines of every key (SCAN, in bounded steps), so it is meant for a background
gauge every few seconds, never for the request path.
"""

from __future__ import annotations

import time

from dynaseal.ledger import redis_keys
from dynaseal.ledger.quota import RESERVATION_TTL_MS
from dynaseal.ledger.redis_async import AsyncLedgerRedis

# Deadlines sets of every key of every tenant (`dynaseal:v2:{tenant:jti}:deadlines`).
DEADLINES_PATTERN = f"{redis_keys.PREFIX}:*:deadlines"


async def oldest_open_reservation_age_s(client: AsyncLedgerRedis, now_ms: int | None = None,
                                        max_keys: int = 100_000, reservation_ttl_ms: int = RESERVATION_TTL_MS) -> float:
    """Seconds since the oldest still-open reservation was taken (0.0 when none is open).

    A deadline is `admitted_at + reservation_ttl_ms`, so the earliest deadline is the oldest
    reservation. At most `max_keys` keys are looked at per call (a bound on the work, not on
    correctness for deployments below it).
    """
    now = int(time.time() * 1000) if now_ms is None else now_ms
    oldest_deadline: float | None = None
    seen = 0
    async for name in client.scan_iter(DEADLINES_PATTERN):
        seen += 1
        first = await client.execute_on(name, "ZRANGE", name, 0, 0, "WITHSCORES")
        if first:  # [member, score]; [[member, score]] from redis-py on RESP3 (a `protocol=3` URL)
            score = float(first[0][1] if isinstance(first[0], list) else first[1])
            oldest_deadline = score if oldest_deadline is None else min(oldest_deadline, score)
        if seen >= max_keys:
            break
    if oldest_deadline is None:
        return 0.0
    return max(0.0, (now - (oldest_deadline - reservation_ttl_ms)) / 1000)
