"""A price as the usage event carries it: the one conversion each way between `Price` and its message.

The shipper writes the price authz chose into the event (`to_message`); the consumer reads it back to
count the cost by token type (`from_message`). Amounts travel as decimal strings, so the round trip is
exact; a cache-write rate the table left unset travels as the input rate it stands for.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from dynaseal.money.pricing import Price, format_amount
from dynaseal.pb.usage_event_pb2 import Price as PriceMessage


def to_message(price: Price) -> PriceMessage:
    """The event's form of a price (every rate written out, the cache-write one included)."""
    return PriceMessage(currency=price.currency, input=format_amount(price.input),
                        cached_input=format_amount(price.cached_input), output=format_amount(price.output),
                        reasoning=format_amount(price.reasoning), cache_write=format_amount(price.cache_write_rate))


def from_message(message: PriceMessage) -> Price | None:
    """The price an event carries; None if an amount is not a decimal (damage, or a record of another shape)."""
    try:
        return Price(message.currency, Decimal(message.input), Decimal(message.cached_input),
                     Decimal(message.output), Decimal(message.reasoning),
                     Decimal(message.cache_write) if message.cache_write else None)
    except InvalidOperation:
        return None
