"""Attempts per account in a sliding window: failed logins (no password guessing through the gateway's
port) and secrets created (each is tried on the tenant's kid-less keys and remembered by the redactor)."""

from __future__ import annotations

import threading
import time
from collections import deque

MAX_ATTEMPTS = 10
WINDOW_S = 300.0


class Throttle:
    """At most `max_attempts` per account name per `window_s`; then 429 until the oldest ages out."""

    def __init__(self, max_attempts: int = MAX_ATTEMPTS, window_s: float = WINDOW_S) -> None:
        self.max_attempts = max_attempts
        self.window_s = window_s
        self._attempts: dict[str, deque[float]] = {}
        # Attempts on real accounts: never evicted by a flood of made-up names (bounded by the accounts).
        self._kept: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, login: str) -> float:
        """Seconds until this account may try again (0: now)."""
        now = time.monotonic()
        with self._lock:
            table = self._kept if login.lower() in self._kept else self._attempts
            recent = table.get(login.lower())
            if recent is None:
                return 0.0
            while recent and recent[0] <= now - self.window_s:
                recent.popleft()
            if not recent:
                del table[login.lower()]
                return 0.0
            return max(0.0, recent[0] + self.window_s - now) if len(recent) >= self.max_attempts else 0.0

    def count(self, login: str, *, kept: bool = False) -> None:
        """Count one attempt. Names that are no account stay bounded (the oldest dropped past 10,000);
        `kept` (a real account) is never dropped, so flooding made-up names cannot reset its count."""
        with self._lock:
            table = self._kept if kept else self._attempts
            if not kept and len(table) >= 10_000 and login.lower() not in table:
                table.pop(next(iter(table)))
            table.setdefault(login.lower(), deque(maxlen=self.max_attempts)).append(time.monotonic())
