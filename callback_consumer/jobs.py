"""What the consumer hands to delivery (a Kafka record) and how handling it ended."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from kafka import TopicPartition


class Outcome(enum.StrEnum):
    """How handling one event ended."""

    DELIVERED = "delivered"
    DLQ = "dlq"
    NO_CALLBACK = "no_callback"
    ABANDONED = "abandoned"
    PARKED = "parked"

    @property
    def finished(self) -> bool:
        """Whether the event's offset may be committed."""
        return self is not Outcome.ABANDONED


@dataclass(frozen=True, slots=True)
class Job:
    """One Kafka record to handle."""

    tp: TopicPartition
    offset: int
    key: bytes | None
    value: bytes
    # The headers it carried in the DLQ, when a replay delivers it again.
    dlq: Mapping[str, str] | None = None
