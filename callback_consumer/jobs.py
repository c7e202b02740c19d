"""What the consumer hands to delivery (a Kafka record) and how handling it ended."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from kafka import TopicPartition

if TYPE_CHECKING:
    from callback_consumer.settlement import SettlementBatcher
    from dynaseal.runtime.views import CallbackTarget, ConsumerView


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


class Sender(Protocol):
    """What a callback that rides on an event (a budget threshold's) needs of delivery: the tenants, the
    signed POST with its retries and DLQ, and the settlement's Redis. The Deliverer is one; the threshold
    sender depends on this, not on the Deliverer, so neither module imports the other."""

    registry: Callable[[], ConsumerView]
    settlements: SettlementBatcher | None

    async def send(self, job: Job, tenant: CallbackTarget, webhook_id: str, body: bytes,
                   dlq_extra: Mapping[str, str] | None = None, park_seq: int | None = None) -> Outcome:
        """POST one signed body with retries; how it ended."""
        ...

    async def blocking(self, fn: Callable[..., object], *args: object) -> object:
        """Run a blocking call off the event loop."""
        ...


class BatchPoster(Protocol):
    """What batched delivery needs of the Deliverer: one signed batch POST within the tenant's concurrency."""

    async def attempt_batch(self, tenant: CallbackTarget, webhook_id: str, body: bytes) -> tuple[int | None, bytes]:
        """(status or None on a timeout/connection error, reply body)."""
        ...
