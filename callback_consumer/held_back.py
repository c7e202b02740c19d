"""Which partitions hold events queued behind a full tenant backlog: the consumer pauses exactly those.

Written by deliveries and read by the consumer's fetches, both on the delivery loop: no lock. A tenant whose receiver
answers slowly fills its backlog; its next events queue in memory in arrival order and the
partitions they came from stop being fetched, so what follows waits in Kafka (uncommitted) rather
than in memory or in the DLQ. Partitions without held events keep flowing.
"""

from __future__ import annotations

from collections import Counter

from kafka import TopicPartition


class HeldBack:
    """Counts of held events per (tenant, partition)."""

    def __init__(self) -> None:
        self._held: Counter[tuple[str, TopicPartition]] = Counter()
        self._tenants: Counter[str] = Counter()

    def add(self, tenant: str, tp: TopicPartition) -> None:
        """One event of `tenant` from `tp` queued behind its backlog."""
        self._held[(tenant, tp)] += 1
        self._tenants[tenant] += 1

    def remove(self, tenant: str, tp: TopicPartition) -> None:
        """That event got its turn (or shutdown came)."""
        self._held[(tenant, tp)] -= 1
        if self._held[(tenant, tp)] <= 0:
            del self._held[(tenant, tp)]
        self._tenants[tenant] -= 1
        if self._tenants[tenant] <= 0:
            del self._tenants[tenant]

    def tenant(self, tenant: str) -> int:
        """Events of this tenant queued now (new ones queue behind them, never ahead)."""
        return self._tenants.get(tenant, 0)

    def partitions(self) -> set[TopicPartition]:
        """Partitions with at least one held event: to pause."""
        return {tp for (_, tp) in self._held}

    def total(self) -> int:
        """Events held now, all tenants."""
        return sum(self._tenants.values())
