"""When to try a callback again: exponential backoff with jitter, and the receiver's Retry-After."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: attempt n waits between half and all of min(cap, base·2ⁿ⁻¹)."""

    base_s: float = 0.5
    cap_s: float = 30.0

    def delay(self, attempt: int, retry_after_s: float | None = None) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        ceiling = min(self.cap_s, self.base_s * 2 ** (attempt - 1))
        wait = ceiling / 2 + random.uniform(0, ceiling / 2)
        if retry_after_s is not None:  # the receiver said when (429/503): honour it, within the cap
            wait = max(wait, min(retry_after_s, self.cap_s))
        return float(wait)


def retry_after_seconds(retry_after: str | None) -> float | None:
    """A Retry-After header in seconds (None: absent, or an HTTP date)."""
    try:
        return float(retry_after) if retry_after else None
    except ValueError:  # an HTTP date: not worth parsing, the backoff applies
        return None
