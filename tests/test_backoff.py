"""The one backoff policy: bounds, cap, jitter range, determinism, Retry-After; and the loops that use it."""

from __future__ import annotations

import math
import random

import pytest

from callback_consumer import dlq
from callback_consumer.retry_policy import RetryPolicy
from dynaseal.backoff import Backoff, Retries, retry_after_seconds
from log_shipper import shipper
from usage_recorder import recorder


def test_the_ceiling_doubles_from_the_base_up_to_the_cap() -> None:
    policy = Backoff(0.5, 5.0)
    assert [policy.ceiling(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert policy.ceiling(0) == policy.ceiling(-3) == 0.5  # an attempt below 1 counts as the first


def test_a_long_outage_never_overflows() -> None:
    policy = Backoff(0.5, 30.0)
    assert policy.ceiling(10_000) == 30.0
    assert 0.0 <= policy.delay(10**9) <= 30.0


@pytest.mark.parametrize("jitter", [0.0, 0.5, 1.0])
def test_every_delay_lies_in_its_jitter_range(jitter: float) -> None:
    policy = Backoff(0.2, 3.0, jitter)
    rng = random.Random(7)
    for attempt in range(1, 12):
        ceiling = policy.ceiling(attempt)
        for _ in range(200):
            wait = policy.delay(attempt, rng=rng)
            assert ceiling * (1 - jitter) <= wait <= ceiling
            assert wait <= policy.cap_s


def test_full_jitter_spreads_over_the_whole_range() -> None:
    """Not a constant: draws reach both the bottom and the top tenth of [0, ceiling]."""
    rng = random.Random(1)
    waits = [Backoff(1.0, 1.0).delay(1, rng=rng) for _ in range(500)]
    assert min(waits) < 0.1 and max(waits) > 0.9


def test_no_jitter_is_the_plain_doubling_schedule() -> None:
    retries = Backoff(2.0, 30.0, jitter=0.0).retries()
    assert [retries.next_delay() for _ in range(6)] == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_a_seeded_random_gives_the_same_waits() -> None:
    first = Backoff(0.5, 5.0).retries(random.Random(42))
    second = Backoff(0.5, 5.0).retries(random.Random(42))
    assert [first.next_delay() for _ in range(8)] == [second.next_delay() for _ in range(8)]


def test_a_reset_starts_from_the_shortest_wait_again() -> None:
    retries = Retries(Backoff(1.0, 8.0, jitter=0.0))
    assert [retries.next_delay() for _ in range(3)] == [1.0, 2.0, 4.0]
    retries.reset()
    assert retries.failures == 0 and retries.next_delay() == 1.0


def test_retry_after_is_honoured_within_the_cap() -> None:
    policy = Backoff(0.5, 10.0)
    rng = random.Random(3)
    assert policy.delay(1, retry_after_s=7.0, rng=rng) == 7.0
    assert policy.delay(1, retry_after_s=3600.0, rng=rng) == 10.0  # a receiver cannot park us for an hour
    assert policy.delay(1, retry_after_s=0.0, rng=rng) <= 0.5  # it never shortens the backoff below its draw
    assert policy.delay(1, retry_after_s=math.nan, rng=rng) <= 0.5


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"base_s": 0.0}, "base_s"), ({"base_s": -1.0}, "base_s"), ({"base_s": math.inf}, "base_s"),
    ({"cap_s": 0.0}, "cap_s"), ({"cap_s": math.nan}, "cap_s"),
    ({"jitter": -0.1}, "jitter"), ({"jitter": 1.5}, "jitter"), ({"jitter": math.nan}, "jitter"),
])
def test_a_nonsense_policy_is_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Backoff(**kwargs)


def test_a_cap_below_the_base_waits_the_cap() -> None:
    assert Backoff(1.0, 0.2, jitter=0.0).delay(1) == 0.2


@pytest.mark.parametrize(("header", "seconds"), [
    (None, None), ("", None), ("7", 7.0), (" 2.5 ", 2.5), ("0", 0.0), ("-5", 0.0),
    ("nan", None), ("inf", None), ("-inf", None), ("1e400", None), ("soon", None), ("7s", None),
])
def test_retry_after_header_values(header: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(header) == seconds


def test_retry_after_as_an_http_date() -> None:
    now = 1_700_000_000.0  # Tue, 14 Nov 2023 22:13:20 GMT
    assert retry_after_seconds("Tue, 14 Nov 2023 22:13:50 GMT", now=now) == 30.0
    assert retry_after_seconds("Tue, 14 Nov 2023 22:13:50 -0000", now=now) == 30.0
    assert retry_after_seconds("Tue, 14 Nov 2023 22:00:00 GMT", now=now) == 0.0  # already past
    assert retry_after_seconds("Tue, 99 Nov 2023 22:13:50 GMT", now=now) is None


def test_the_callback_policy_keeps_half_of_each_ceiling() -> None:
    """The consumer's defaults are what they were: base 0.5 s, cap 30 s, between half and all of the ceiling."""
    policy = RetryPolicy()
    assert isinstance(policy, Backoff)
    assert (policy.base_s, policy.cap_s, policy.jitter) == (0.5, 30.0, 0.5)
    positional = RetryPolicy(0.2, 1.0)  # as `--retry-base-s 0.2 --retry-cap-s 1` builds it
    rng = random.Random(5)
    assert all(0.4 <= positional.delay(3, rng=rng) <= 0.8 for _ in range(100))


def test_the_service_loops_draw_from_the_one_policy() -> None:
    """No loop keeps a doubling of its own: each names a Backoff, never waiting longer than it used to."""
    for policy in (dlq.RETRY_BACKOFF, shipper.RETRY_BACKOFF):
        assert (policy.base_s, policy.cap_s) == (0.5, 5.0)
    assert recorder.RETRY_BACKOFF.cap_s <= 2.0
