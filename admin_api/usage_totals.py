"""A tenant's tokens spent, as the seed's `total_tokens`: summed from the ledger's per-key counters in Redis.

The counters of a key live as long as the key (plus its settlement window), so this is what the
tenant's live keys spent; the usage store keeps the whole history. Read with the services' client
(`redis_async.connect`): on a `redis+cluster://` URL every master is scanned, as each holds some keys.
"""

from __future__ import annotations

import asyncio
import time
import weakref

from dynaseal.ledger.redis_async import AsyncLedgerRedis, connect
from dynaseal.ledger.redis_keys import PREFIX, key_tag

SCAN_COUNT = 1000
TIMEOUT_S = 2.0


async def tenant_total_tokens(redis_url: str | None, tenant_id: str) -> int:
    """Tokens settled (`spent`) over every root key of the tenant; 0 without a Redis."""
    if not redis_url:
        return 0
    # key_tag escapes the tenant id, so `*` after it can only match this tenant's keys.
    pattern = f"{PREFIX}:{key_tag(tenant_id, '')[:-1]}*}}:counters"
    client = connect(redis_url, TIMEOUT_S)
    try:
        seen: set[str] = set()  # SCAN may return a name twice: count each key once
        batch: list[str] = []
        total = 0
        async for key in client.scan_iter(_glob_escape(pattern)):
            if key not in seen:
                seen.add(key)
                batch.append(key)
            if len(batch) >= SCAN_COUNT:
                total += await _spent(client, batch)
                batch = []
        return total + await _spent(client, batch)
    finally:
        await client.aclose()


async def _spent(client: AsyncLedgerRedis, keys: list[str]) -> int:
    # Each HGET on its key's node; the pipelined clients send the ones of one loop turn in one write.
    replies = await asyncio.gather(*(client.execute_on(key, "HGET", key, "spent") for key in keys))
    return sum(int(spent) for spent in replies if spent is not None)


def _glob_escape(pattern: str) -> str:
    # Redis MATCH is a glob: the tenant's own `[`, `]`, `?` and `\\` must match literally; the final `*` stays.
    head, star, tail = pattern.rpartition("*")
    for char in ("\\", "[", "]", "?", "*"):
        head = head.replace(char, "\\" + char)
    return head + star + tail


class RecentTotals:
    """`tenant_total_tokens`, one scan at a time and each reused for `fresh_s`: a backend polling its usage
    cannot turn its calls into a stream of keyspace scans on the gateway's Redis."""

    def __init__(self, fresh_s: float = 1.0) -> None:
        self.fresh_s = fresh_s
        self._read: dict[tuple[str | None, str], tuple[float, int]] = {}
        # An asyncio lock belongs to one event loop: one per loop (a service runs one; each test app its own).
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()

    async def read(self, redis_url: str | None, tenant_id: str) -> int:
        """The tenant's total, scanned now unless a scan of the last `fresh_s` has it (RedisError if it fails)."""
        lock = self._locks.setdefault(asyncio.get_running_loop(), asyncio.Lock())
        async with lock:
            seen = self._read.get((redis_url, tenant_id))
            if seen is not None and time.monotonic() - seen[0] < self.fresh_s:
                return seen[1]
            total = await tenant_total_tokens(redis_url, tenant_id)
            if len(self._read) >= 10_000:
                self._read.clear()
            self._read[(redis_url, tenant_id)] = (time.monotonic(), total)
            return total
