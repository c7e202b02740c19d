"""A tenant's tokens spent, as the seed's `total_tokens`: summed from the ledger's per-key counters in Redis.

The counters of a key live as long as the key (plus its settlement window), so this is what the
tenant's live keys spent; the usage store keeps the whole history.
"""

from __future__ import annotations

import threading
import time

from redis import Redis

from dynaseal.ledger.redis_keys import PREFIX, key_tag

SCAN_COUNT = 1000


def tenant_total_tokens(redis_url: str | None, tenant_id: str) -> int:
    """Tokens settled (`spent`) over every root key of the tenant; 0 without a Redis."""
    if not redis_url:
        return 0
    # key_tag escapes the tenant id, so `*` after it can only match this tenant's keys.
    pattern = f"{PREFIX}:{key_tag(tenant_id, '')[:-1]}*}}:counters"
    client = Redis.from_url(redis_url, socket_timeout=2.0)
    try:
        total = 0
        for key in client.scan_iter(match=_glob_escape(pattern), count=SCAN_COUNT):
            spent = client.hget(key, "spent")
            total += int(spent) if spent is not None else 0
        return total
    finally:
        client.close()


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
        self._lock = threading.Lock()

    def read(self, redis_url: str | None, tenant_id: str) -> int:
        """The tenant's total, scanned now unless a scan of the last `fresh_s` has it (RedisError if it fails)."""
        with self._lock:
            seen = self._read.get((redis_url, tenant_id))
            if seen is not None and time.monotonic() - seen[0] < self.fresh_s:
                return seen[1]
            total = tenant_total_tokens(redis_url, tenant_id)
            if len(self._read) >= 10_000:
                self._read.clear()
            self._read[(redis_url, tenant_id)] = (time.monotonic(), total)
            return total
