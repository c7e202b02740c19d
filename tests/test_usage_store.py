"""The usage store: one row per request id whatever is repeated, notices superseded, sums per bucket and group."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from dynaseal.pb import UsageEvent
from dynaseal.usage_store.queries import UsageFilter, refusals_by_code, usage_series, usage_totals
from dynaseal.usage_store.recording import record
from dynaseal.usage_store.rows import cost_nanos, row_of
from dynaseal.usage_store.schema import make_engine, metadata

T0 = 1_780_000_000 - 1_780_000_000 % 86400  # a UTC midnight


def event(request_id: str, tenant: str = "t1", model: str = "m1", at_s: int = T0, total: int = 10,
          cost: str | None = "0.0001", source: str = "upstream", jti: str = "k1", **fields: object) -> UsageEvent:
    """A usage event as the shipper produces it (started_at in RFC 3339)."""
    from datetime import UTC, datetime

    started = datetime.fromtimestamp(at_s, UTC).isoformat().replace("+00:00", "Z")
    made = UsageEvent(request_id=request_id, tenant=tenant, jti=jti, event_id=jti, model=model, status=200,
                      prompt_tokens=total - 4, completion_tokens=4, total_tokens=total, usage_source=source,
                      started_at=started, **fields)  # type: ignore[arg-type]
    if cost is None:
        made.unpriced = True
    else:
        made.cost, made.currency = cost, "USD"
    return made


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL server for the module (skipped where none can run)."""
    from postgres_support import postgres_server

    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """The same store code on SQLite (the default) and on PostgreSQL, each test on an empty table."""
    if request.param == "sqlite":
        made = make_engine(f"sqlite:///{tmp_path / 'usage.db'}")
    else:
        made = make_engine(request.getfixturevalue("postgres_url"))
        metadata.drop_all(made)
        metadata.create_all(made)
    yield made
    made.dispose()


def window() -> UsageFilter:
    return UsageFilter(T0 - 86400, T0 + 7 * 86400)


def test_a_request_is_stored_once_whatever_repeats(engine: Engine) -> None:
    assert record(engine, [event("r1"), event("r2"), event("r1")]) == 2
    assert record(engine, [event("r1"), event("r2", total=999)]) == 0  # a redelivered batch changes nothing
    [total] = usage_totals(engine, window())
    assert total == {"tenant": "t1", "requests": 2, "total_tokens": 20, "cost": {"amount": "0.0002", "currency": "USD"}}


def test_a_reservation_notice_is_replaced_by_the_real_line_never_the_reverse(engine: Engine) -> None:
    assert record(engine, [event("r1", total=400, cost="0.004", source="reservation")]) == 1
    assert record(engine, [event("r1", total=12, cost="0.00012")]) == 1  # the line arrived after all
    assert record(engine, [event("r1", total=400, cost="0.004", source="reservation")]) == 0
    # In one batch as well: the notice and the line of one request, either order.
    assert record(engine, [event("r2", total=12, cost="0.00012"), event("r2", total=400, source="reservation")]) == 1
    assert record(engine, [event("r3", total=400, source="reservation"), event("r3", total=12, cost="0.00012")]) == 1
    [total] = usage_totals(engine, window())
    assert total["total_tokens"] == 36 and total["cost"] == {"amount": "0.00036", "currency": "USD"}


def test_buckets_groups_and_filters(engine: Engine) -> None:
    record(engine, [event("a", at_s=T0 + 5), event("b", at_s=T0 + 65, model="m2"), event("c", at_s=T0 + 3700),
                    event("d", at_s=T0 + 90000, tenant="t2", jti="k9"), event("e", at_s=T0 + 10, cost=None)])
    minutes = usage_series(engine, window(), "minute", ("tenant", "model"))
    assert [(r["bucket"], r["model"], r["requests"], r["cost"]) for r in minutes if r["tenant"] == "t1"] == [
        ("2026-05-28T00:00:00Z", "m1", 1, None),  # the unpriced request: tokens, no cost
        ("2026-05-28T00:00:00Z", "m1", 1, {"amount": "0.0001", "currency": "USD"}),
        ("2026-05-28T00:01:00Z", "m2", 1, {"amount": "0.0001", "currency": "USD"}),
        ("2026-05-28T01:01:00Z", "m1", 1, {"amount": "0.0001", "currency": "USD"})]
    days = usage_series(engine, window(), "day", ("tenant",))
    assert [(r["bucket"], r["tenant"], r["requests"]) for r in days if r["cost"]] == [
        ("2026-05-28T00:00:00Z", "t1", 3), ("2026-05-29T00:00:00Z", "t2", 1)]
    by_key = UsageFilter(T0, T0 + 86400 * 2, key_id="k9")
    assert [(r["bucket"], r["key"]) for r in usage_series(engine, by_key, "hour", ("key",))] == [
        ("2026-05-29T01:00:00Z", "k9")]
    assert usage_series(engine, UsageFilter(T0, T0 + 60, tenant="t2"), "hour", ("tenant",)) == []
    assert len(usage_series(engine, UsageFilter(T0, T0 + 3600, model="m2"), "hour", ("model",))) == 1


def test_child_keys_count_toward_their_root(engine: Engine) -> None:
    child = event("c1", jti="child", root_jti="root")
    child.chain.extend(["root", "child"])
    record(engine, [event("r1", jti="root"), child])
    assert usage_totals(engine, UsageFilter(T0 - 1, T0 + 1, key_id="root"))[0]["requests"] == 2
    assert usage_totals(engine, UsageFilter(T0 - 1, T0 + 1, key_id="child"))[0]["requests"] == 1


def test_content_refusals_are_counted_by_code_not_as_usage(engine: Engine) -> None:
    blocked = event("x1", cost=None, source="none", total=0, content_rule="no-secrets")
    record(engine, [blocked, event("x2")])
    assert refusals_by_code(engine, window()) == [{"tenant": "t1", "code": "content_blocked", "count": 1}]
    assert usage_totals(engine, window())[0]["requests"] == 1


def test_events_without_ids_and_hostile_amounts_are_not_stored() -> None:
    assert row_of(UsageEvent(tenant="t", jti="k")) is None and row_of(UsageEvent(request_id="r", jti="k")) is None
    assert cost_nanos("0.000000001") == 1 and cost_nanos("0.0000000001") == 1  # rounded up, never down
    assert cost_nanos("NaN") == cost_nanos("-1") == cost_nanos("abc") == cost_nanos("Infinity") == 0
    hostile = event("r" * 500, model="m" * 500)
    hostile.started_at, hostile.shipped_at_ms = "not a time", T0 * 1000 + 1500
    row = row_of(hostile)
    assert row is not None and len(row["request_id"]) == 80 and len(row["model"]) == 128
    assert row["started_s"] == T0 + 1  # an unreadable start: when it was shipped


def test_a_dlq_entry_is_claimed_for_replay_once(engine: Engine) -> None:
    from dynaseal.usage_store import replays

    assert replays.claim(engine, "0:5", "r1", "t1") and not replays.claim(engine, "0:5", "r1", "t1")
    replays.release(engine, "0:5")  # the broker refused the replay: it may be tried again
    assert replays.claim(engine, "0:5", "r1", "t1") and set(replays.replayed(engine)) == {"0:5"}
