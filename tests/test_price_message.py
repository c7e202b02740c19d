"""The price an event carries reads back as the price authz chose: same cost for any usage, damage refused."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dynaseal.money.pricing import Price, TokenUsage
from dynaseal.pb.usage_event_pb2 import Price as PriceMessage
from dynaseal.usage.price_message import from_message, to_message

rates = st.decimals(min_value=0, max_value=1000, places=6, allow_nan=False, allow_infinity=False)
counts = st.integers(min_value=0, max_value=2_000_000)


@given(rates, rates, rates, rates, st.none() | rates, counts, counts, counts, counts, counts)
def test_round_trip_costs_the_same(inp: Decimal, cached: Decimal, out: Decimal, reasoning: Decimal,
                                   cache_write: Decimal | None, prompt: int, completion: int, cached_n: int,
                                   reasoning_n: int, written: int) -> None:
    price = Price("EUR", inp, cached, out, reasoning, cache_write)
    back = from_message(PriceMessage.FromString(to_message(price).SerializeToString()))
    assert back is not None and back.currency == "EUR"
    usage = TokenUsage(prompt, completion, cached_n, reasoning_n, written)
    assert back.cost(usage) == price.cost(usage)
    assert back.bound_micros(prompt, completion) == price.bound_micros(prompt, completion)


def test_an_unset_cache_write_rate_travels_as_the_input_rate() -> None:
    price = Price("USD", Decimal("0.15"), Decimal("0.075"), Decimal("0.6"), Decimal("0.6"))
    message = to_message(price)
    assert message.cache_write == "0.15"
    back = from_message(message)
    assert back is not None and back.cache_write_rate == Decimal("0.15")


@pytest.mark.parametrize("damaged", ["", "abc", "1e", "--1", "0x10", "1,5"])
def test_an_amount_that_is_not_a_decimal_reads_as_no_price(damaged: str) -> None:
    message = to_message(Price("USD", Decimal(1), Decimal(1), Decimal(2), Decimal(2)))
    message.output = damaged
    assert from_message(message) is None
