"""When to try a callback again: the core's backoff, keeping at least half of each ceiling."""

from __future__ import annotations

from dataclasses import dataclass

from dynaseal.backoff import Backoff, retry_after_seconds

__all__ = ["RetryPolicy", "retry_after_seconds"]


@dataclass(frozen=True)
class RetryPolicy(Backoff):
    """Attempt n waits between half and all of min(cap, base·2ⁿ⁻¹); a Retry-After is honoured within the cap.

    Half jitter, not full: a receiver that just failed always gets a rest before the next try.
    """

    base_s: float = 0.5
    cap_s: float = 30.0
    jitter: float = 0.5
