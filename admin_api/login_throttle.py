"""Failed logins per account, so the seed's login on the gateway's port cannot be used to guess passwords."""

from __future__ import annotations

import threading
import time
from collections import deque

MAX_FAILURES = 10
WINDOW_S = 300.0


class LoginThrottle:
    """At most `MAX_FAILURES` failed logins per account name per `WINDOW_S`; then 429 until the oldest ages."""

    def __init__(self, max_failures: int = MAX_FAILURES, window_s: float = WINDOW_S) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, login: str) -> float:
        """Seconds until this account may try again (0: now)."""
        now = time.monotonic()
        with self._lock:
            recent = self._failures.get(login.lower())
            if recent is None:
                return 0.0
            while recent and recent[0] <= now - self.window_s:
                recent.popleft()
            if not recent:
                del self._failures[login.lower()]
                return 0.0
            return max(0.0, recent[0] + self.window_s - now) if len(recent) >= self.max_failures else 0.0

    def failed(self, login: str) -> None:
        """Count one failed login; the map stays bounded (oldest accounts dropped past 10,000 names)."""
        with self._lock:
            if len(self._failures) >= 10_000 and login.lower() not in self._failures:
                self._failures.pop(next(iter(self._failures)))
            self._failures.setdefault(login.lower(), deque(maxlen=self.max_failures)).append(time.monotonic())
