"""Per-partition commit points: an offset becomes committable once it and every offset before it are done."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from kafka import TopicPartition


class OffsetTracker:
    """Tracks handed-out offsets per partition; deliveries finish in any order, commits advance in order.

    Used on the consumer's one loop only (fetches add, deliveries finish, the rebalance listener forgets): no lock.
    """

    def __init__(self) -> None:
        self._pending: dict[TopicPartition, OrderedDict[int, bool]] = {}
        self._next: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}

    def add(self, tp: TopicPartition, offset: int) -> None:
        """An offset handed to delivery (offsets of one partition arrive in increasing order)."""
        pending = self._pending.setdefault(tp, OrderedDict())
        latest = next(reversed(pending)) if pending else self._next.get(tp, 0) - 1
        if offset <= latest:
            # Read again from an earlier offset (the position was reset, e.g. a dev broker that
            # restarted empty): what was tracked no longer describes this log.
            pending.clear()
            self._next.pop(tp, None)
            self._committed.pop(tp, None)
        pending[offset] = False

    def done(self, tp: TopicPartition, offset: int) -> None:
        """An offset finished (delivered or dead-lettered); unknown partitions are ignored (revoked)."""
        pending = self._pending.get(tp)
        if pending is None or offset not in pending:
            return
        pending[offset] = True
        while pending:
            first, finished = next(iter(pending.items()))
            if not finished:
                break
            pending.popitem(last=False)
            self._next[tp] = first + 1

    def committable(self) -> dict[TopicPartition, int]:
        """Partitions whose commit point moved since `committed()`: tp → next offset to read."""
        return {tp: n for tp, n in self._next.items() if self._committed.get(tp) != n}

    def committed(self, offsets: dict[TopicPartition, int]) -> None:
        """Record that these commit points were committed (for partitions still owned)."""
        self._committed.update({tp: n for tp, n in offsets.items() if tp in self._next})

    def commit_point(self, tp: TopicPartition) -> int | None:
        """The offset a commit would store now for tp (None before anything finished)."""
        return self._next.get(tp)

    def low_water(self, tp: TopicPartition) -> int | None:
        """The oldest offset not yet done (what a restart would read first), if known."""
        pending = self._pending.get(tp)
        if pending:
            return next(iter(pending))
        return self._next.get(tp)

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        """Drop partitions this member no longer owns; their late completions are ignored."""
        for tp in list(tps):
            self._pending.pop(tp, None)
            self._next.pop(tp, None)
            self._committed.pop(tp, None)

    def in_flight(self) -> int:
        """Offsets handed out and not yet done (including done ones waiting behind a slower one)."""
        return sum(len(p) for p in self._pending.values())
