"""The one backoff policy: exponential waits with a cap and jitter, and a receiver's Retry-After.

Every retry loop of the services (broker reconnects, DLQ writes, settlement, callback delivery,
parked-event probes) draws its waits from a `Backoff`; what differs between them is only the numbers.
The loops themselves stay where they are, because each waits on something of its own (a shutdown
event, a tenant going down) that a generic retry decorator could not wait on.
"""

from __future__ import annotations

import datetime
import email.utils
import math
import random
import time
from dataclasses import dataclass, field

# 2**64 times any sane base is past every cap: the exponent stops there, so a long outage never overflows.
_MAX_EXPONENT = 64


@dataclass(frozen=True)
class Backoff:
    """Attempt n (1-based) waits a random time in [(1 − jitter)·c, c] with c = min(cap_s, base_s·2ⁿ⁻¹).

    `jitter` is the share of the ceiling drawn at random: 1.0 is full jitter (spreads many clients
    retrying at once), 0.5 keeps at least half the ceiling (a failing receiver always gets a rest),
    0.0 is no jitter (a fixed doubling schedule).
    """

    base_s: float = 0.5
    cap_s: float = 30.0
    jitter: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.base_s) and self.base_s > 0):
            raise ValueError("backoff base_s must be a positive number of seconds")
        if not (math.isfinite(self.cap_s) and self.cap_s > 0):  # below base_s: every wait is the cap
            raise ValueError("backoff cap_s must be a positive number of seconds")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError("backoff jitter must be between 0 and 1")

    def ceiling(self, attempt: int) -> float:
        """The longest wait after failed attempt number `attempt` (1-based; below 1 counts as 1)."""
        exponent = min(max(attempt, 1) - 1, _MAX_EXPONENT)
        return float(min(self.cap_s, self.base_s * 2.0 ** exponent))

    def delay(self, attempt: int, retry_after_s: float | None = None, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt `attempt`; a Retry-After is honoured, within the cap."""
        ceiling = self.ceiling(attempt)
        draw = (rng or _RANDOM).random()
        wait = ceiling * (1.0 - self.jitter * draw)
        if retry_after_s is not None and math.isfinite(retry_after_s):  # the receiver said when (429/503)
            wait = max(wait, min(retry_after_s, self.cap_s))
        return float(wait)

    def retries(self, rng: random.Random | None = None) -> Retries:
        """A fresh run of failures following this policy."""
        return Retries(self, rng)


@dataclass
class Retries:
    """The waits of one run of failures: each `next_delay` grows, `reset` after a success starts over."""

    policy: Backoff
    rng: random.Random | None = None
    failures: int = field(default=0)

    def next_delay(self, retry_after_s: float | None = None) -> float:
        """Count one more failure and return how long to wait before trying again."""
        self.failures += 1
        return self.policy.delay(self.failures, retry_after_s, self.rng)

    def reset(self) -> None:
        """A success: the next failure waits the shortest time again."""
        self.failures = 0


def retry_after_seconds(retry_after: str | None, now: float | None = None) -> float | None:
    """A Retry-After header (delay-seconds or an HTTP date) in seconds from now; None if absent or unusable."""
    if not retry_after:
        return None
    text = retry_after.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT; one marked "-0000" is read as such
            when = when.replace(tzinfo=datetime.UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    # "nan", "inf" or a negative number say nothing usable: the backoff applies on its own.
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


_RANDOM = random.Random()
