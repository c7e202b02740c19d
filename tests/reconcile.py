"""Reconcile a fault drill: what authz admitted, what the log says, what arrived; duplicates and losses.

- admitted: requests authz let through, from the keys' Redis counters (`uses`)
- expected: distinct request ids of admitted requests, from the access log (or a count when the log
  is gone, e.g. rotated and deleted)
- received: distinct request ids delivered (callbacks answered 2xx, or events read from the topic)
- duplicates: deliveries beyond the first per request id (allowed: the consumer dedups by request_id)
- lost: expected ids never received (must be 0)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from conftest import DEMO_TENANT
from ledger_sync import counters
from redis import Redis

from dynaseal.usage.events import parse_line


@dataclass(frozen=True)
class Report:
    """The numbers of one drill."""

    admitted: int
    expected: int
    received: int
    duplicates: int
    lost: int
    unexpected: int = 0
    lost_ids: list[str] = field(default_factory=list)

    def line(self, name: str) -> str:
        """One printable line."""
        return (f"{name}: admitted={self.admitted} expected={self.expected} received={self.received} "
                f"duplicates={self.duplicates} lost={self.lost} unexpected={self.unexpected}")

    @property
    def clean(self) -> bool:
        """Nothing lost, nothing invented, and the log agrees with authz."""
        return self.lost == 0 and self.unexpected == 0 and self.admitted == self.expected


def log_lines(access_log: Path) -> list[bytes]:
    """Every line of the log and of its rotated siblings that still exist."""
    lines: list[bytes] = []
    for path in [access_log, *sorted(access_log.parent.glob(access_log.name + ".*"))]:
        if path.is_file():
            lines.extend(path.read_bytes().splitlines())
    return lines


def admitted_ids(lines: Iterable[bytes], jtis: set[str]) -> set[str]:
    """Request ids of the lines that make a usage event for one of these keys."""
    ids = set()
    for line in lines:
        event = parse_line(line)
        if event is not None and event.jti in jtis:
            ids.add(event.request_id)
    return ids


def admitted_by_authz(redis_client: Redis, jtis: set[str], tenant: str = DEMO_TENANT) -> int:
    """Requests authz admitted for these keys of one tenant (their `uses` counters)."""
    return sum(counters(redis_client, tenant, jti).get("uses", 0) for jti in jtis)


def reconcile(admitted: int, expected: set[str] | int, received: Iterable[str]) -> Report:
    """Compare what should have arrived with what did (`received`: one request id per delivery)."""
    deliveries = Counter(received)
    got = set(deliveries)
    duplicates = sum(deliveries.values()) - len(got)
    if isinstance(expected, int):
        return Report(admitted, expected, len(got), duplicates, max(expected - len(got), 0))
    lost = sorted(expected - got)
    return Report(admitted, len(expected), len(got), duplicates, len(lost), len(got - expected), lost)
