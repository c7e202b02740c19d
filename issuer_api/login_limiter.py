"""Throttling failed logins per username and client address, so passwords cannot be guessed fast.

In memory, per process: enough for one issuer instance; several replicas each count on their own.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque


class LoginLimiter:
    """A sliding window of failed attempts per (username, client IP)."""

    def __init__(self, max_failures: int = 5, window_s: float = 60.0, max_tracked: int = 10_000) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        # Bounded, oldest dropped first, so a flood of random usernames cannot exhaust memory.
        self.max_tracked = max_tracked
        self._failures: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()
        # Endpoints run in a threadpool: guard the shared dict.
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, str], now: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def retry_after(self, username: str, client_ip: str, now: float | None = None) -> int:
        """Seconds until another attempt is allowed; 0 if one is allowed now."""
        now = time.monotonic() if now is None else now
        with self._lock:
            times = self._recent((username, client_ip), now)
            if times is None or len(times) < self.max_failures:
                return 0
            return max(1, math.ceil(times[0] + self.window_s - now))

    def record_failure(self, username: str, client_ip: str, now: float | None = None) -> None:
        """Count one failed attempt."""
        now = time.monotonic() if now is None else now
        key = (username, client_ip)
        with self._lock:
            times = self._recent(key, now) or deque()
            times.append(now)
            self._failures[key] = times
            self._failures.move_to_end(key)
            while len(self._failures) > self.max_tracked:
                self._failures.popitem(last=False)

    def reset(self, username: str, client_ip: str) -> None:
        """Forget failures after a successful login."""
        with self._lock:
            self._failures.pop((username, client_ip), None)
