"""Prices, exact costs per token type, the money fields of events and callbacks, money claims and config."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from dynaseal.config import ConfigError, DynasealConfig, load_config
from dynaseal.errors import Refusal
from dynaseal.keys.claims import check_claims
from dynaseal.keys.tenants import build_registry
from dynaseal.money.budget_thresholds import Crossing, basis_points, threshold_body, threshold_webhook_id
from dynaseal.money.pricing import Price, TokenUsage, format_amount, from_micros, to_micros
from dynaseal.policy.request_policy import check_request
from dynaseal.tenant_config import CallbackConfig, Limits, TenantUpstream
from dynaseal.usage.callbacks import callback_payload
from dynaseal.usage.events import parse_line

# gpt-4o-mini-like: every line a different price, so each token type shows up in the total.
PRICE = Price("USD", Decimal("0.15"), Decimal("0.075"), Decimal("0.6"), Decimal("2.4"))


def test_cost_is_exact_for_each_token_type() -> None:
    usage = TokenUsage(prompt=1234, completion=567, cached=1000, reasoning=300)
    lines = PRICE.line_costs(usage)
    # By hand: 234 × 0.15, 1000 × 0.075, 267 × 0.6, 300 × 2.4 (per million).
    assert {k: format_amount(v) for k, v in lines.items()} == {
        "input": "0.0000351", "cached_input": "0.000075", "output": "0.0001602", "reasoning": "0.00072"}
    assert format_amount(PRICE.cost(usage)) == "0.0009903"
    assert isinstance(PRICE.cost(usage), Decimal)


def test_missing_cached_and_reasoning_prices_fall_back_to_input_and_output() -> None:
    cfg_price = TenantUpstream(prices={"m": {"input": 0.15, "output": 0.6}}).prices["m"]
    assert cfg_price.input == Decimal("0.15") and cfg_price.cached_input is None
    raw = _tenant_config({"prices": {"m": {"input": 0.15, "output": 0.6}}})
    price = build_registry(raw).tenants["t"].price_of("m")
    assert price is not None and (price.cached_input, price.reasoning) == (Decimal("0.15"), Decimal("0.6"))


def test_micro_units_round_up_and_amounts_print_without_exponent() -> None:
    assert to_micros(Decimal("0.0000001")) == 1 and to_micros(Decimal("0.000002")) == 2
    assert to_micros(Decimal(0)) == 0
    assert format_amount(from_micros(123)) == "0.000123"
    assert format_amount(Decimal("1E-7")) == "0.0000001"
    assert format_amount(Decimal("12.500")) == "12.5" and format_amount(Decimal("0.00")) == "0"


@pytest.mark.parametrize("cached,reasoning", [(0, 0), (100, 0), (0, 50), (100, 50)])
def test_the_reservation_bound_covers_every_mix(cached: int, reasoning: int) -> None:
    dear_cache = replace(PRICE, cached_input=Decimal("9"))  # an odd table: cached dearer than input
    for price in (PRICE, dear_cache):
        bound = price.bound_micros(100, 50)
        assert to_micros(price.cost(TokenUsage(100, 50, cached, reasoning))) <= bound


def test_price_encoding_round_trips_and_rejects_damage() -> None:
    assert Price.decode(PRICE.encode()) == PRICE
    for bad in ("", "usd 1 1 1 1", "USD 1 1 1", "USD 1 1 1 -1", "USD 1 1 1 NaN", "USD a b c d", "USD 1 1 1 inf"):
        assert Price.decode(bad) is None, bad


def _tenant_config(upstream: dict[str, object], limits: dict[str, object] | None = None,
                   callback: dict[str, object] | None = None) -> DynasealConfig:
    tenant: dict[str, object] = {"id": "t", "keys": [{"alg": "HS256", "secret_env": "PRICING_TEST_SECRET"}],
                                 "upstream": upstream, "limits": limits or {}}
    if callback is not None:
        tenant["callback"] = callback
    return DynasealConfig.model_validate({"tenants": [tenant]})


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRICING_TEST_SECRET", "s" * 32)
    monkeypatch.setenv("PRICING_TEST_WHSEC", "whsec_ZHluYXNlYWwtZGV2LXdlYmhvb2stc2VjcmV0LTAwMQ==")


def test_config_errors_are_all_reported(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"tenants": [{
        "id": "t", "keys": [{"alg": "HS256", "secret_env": "X"}],
        "upstream": {"currency": "usd", "unpriced": "maybe", "prices": {"m": {"input": -1, "output": "x"}}},
        "limits": {"budget_cost": "0.0000001"},
        "callback": {"url": "http://x", "secret_env": "Y", "budget_thresholds": [0.8, 0.8, 1.5]}}]}))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    for where in ("upstream.currency", "upstream.unpriced", "prices.m.input", "prices.m.output",
                  "limits.budget_cost", "callback.budget_thresholds"):
        assert where in text, where


def test_thresholds_are_sorted_basis_points() -> None:
    callback = CallbackConfig(url="http://x", secret_env="Y", budget_thresholds=[1.0, 0.8, 0.95])
    assert basis_points(callback.budget_thresholds) == "8000,9500,10000"
    assert Limits(budget_cost=2.5).budget_cost == Decimal("2.5")


# --- claims and the request policy --------------------------------------------------------------

def _key(cfg: DynasealConfig, **claims: object):  # type: ignore[no-untyped-def]
    registry = build_registry(cfg)
    payload = {"iss": "t", "aud": "dynaseal", "exp": time.time() + 60, "jti": "k1", "max_tokens": 100, **claims}
    return check_claims(payload, registry.tenants["t"], registry, b"x", time.time())


def test_budget_cost_claim_in_micro_units_capped_by_the_tenant() -> None:
    cfg = _tenant_config({"currency": "EUR", "prices": {"m": {"input": 1, "output": 2}}}, {"budget_cost": "5"})
    assert _key(cfg).budget_cost == 5_000_000  # the tenant's default
    assert _key(cfg, budget_cost={"amount": "2.5", "currency": "EUR"}).budget_cost == 2_500_000
    assert _key(cfg, budget_cost={"amount": "9", "currency": "EUR"}).budget_cost == 5_000_000
    assert _key(cfg, budget_cost={"amount": "0.1234560", "currency": "EUR"}).budget_cost == 123_456
    for bad in ({"amount": "2.5", "currency": "USD"}, {"amount": "-1", "currency": "EUR"},
                {"amount": "0.0000001", "currency": "EUR"}, {"amount": "NaN", "currency": "EUR"},
                {"amount": True, "currency": "EUR"}, {"amount": "1"}, "2.5", {"amount": "1e999999", "currency": "EUR"}):
        with pytest.raises(Refusal) as refusal:
            _key(cfg, budget_cost=bad)
        assert refusal.value.code.value == "invalid_api_key", bad


def test_unpriced_model_is_served_refused_or_refused_for_money_budgets() -> None:
    body = {"model": "free", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}
    serve = _tenant_config({"prices": {"m": {"input": 1, "output": 2}}})
    assert check_request(body, _key(serve), 50).price is None
    assert check_request({**body, "model": "m"}, _key(serve), 50).reservation_cost == (50 + 32) * 1 + 10 * 2
    with pytest.raises(Refusal) as refusal:
        check_request(body, _key(serve, budget_cost={"amount": "1", "currency": "USD"}), 50)
    assert refusal.value.code.value == "model_not_allowed"
    refuse = _tenant_config({"unpriced": "refuse", "prices": {"m": {"input": 1, "output": 2}}})
    with pytest.raises(Refusal) as refusal:
        check_request(body, _key(refuse), 50)
    assert refusal.value.code.value == "model_not_allowed" and "no price" in refusal.value.message


# --- events and callbacks ------------------------------------------------------------------------

def _line(**fields: object) -> bytes:
    record = {"tenant": "t", "jti": "k1", "request_id": "r-1", "code": 200, "model": "m", "reserved": 500,
              "price": PRICE.encode(), "reserved_cost": 777, "budget": 4000, "budget_cost": 2_000_000}
    record.update(fields)
    return json.dumps(record).encode()


def test_event_cost_from_the_upstreams_usage_and_details() -> None:
    event = parse_line(_line(prompt_tokens=1234, completion_tokens=567, total_tokens=1801, cached_tokens=1000,
                             reasoning_tokens=300))
    assert event is not None
    assert (event.cached_tokens, event.reasoning_tokens, event.cost, event.currency) == (1000, 300, "0.0009903", "USD")
    assert event.cost_micros == 991 and not event.unpriced  # 990.3 micro-units, rounded up
    assert (event.budget_tokens, event.budget_cost_micros, event.reserved_cost_micros) == (4000, 2_000_000, 777)
    assert event.price.cached_input == "0.075"
    payload = callback_payload(event, include_content=False)
    assert payload["cost"] == {"amount": "0.0009903", "currency": "USD"}
    assert payload["usage"]["prompt_tokens_details"] == {"cached_tokens": 1000, "cache_write_tokens": 0}
    assert payload["usage"]["completion_tokens_details"] == {"reasoning_tokens": 300}


def test_event_cost_by_usage_source_and_unpriced() -> None:
    reserved = parse_line(_line(flags="DC", code=0))  # client left before the usage chunk
    assert reserved is not None and reserved.usage_source == "reserved"
    assert (reserved.cost, reserved.cost_micros) == ("0.000777", 777)
    failed = parse_line(_line(code=503, details="via_upstream"))  # the upstream's own error: nothing billed
    assert failed is not None and (failed.usage_source, failed.cost, failed.cost_micros) == ("none", "0", 0)
    gave_up = parse_line(_line(code=504, flags="UT", details="upstream_response_timeout"))  # Envoy gave up
    assert gave_up is not None and (gave_up.usage_source, gave_up.cost_micros) == ("reserved", 777)
    unpriced = parse_line(_line(price=None, prompt_tokens=3, completion_tokens=4, total_tokens=7))
    assert unpriced is not None and unpriced.unpriced and unpriced.cost == ""
    assert callback_payload(unpriced, include_content=False)["cost"] is None
    # Details above their totals (a confused upstream) are capped, never billed twice.
    odd = parse_line(_line(prompt_tokens=10, completion_tokens=5, total_tokens=15, cached_tokens=99,
                           reasoning_tokens=99, price="garbage"))
    assert odd is not None and (odd.cached_tokens, odd.reasoning_tokens, odd.unpriced) == (10, 5, True)


def test_threshold_callback_id_is_per_key_and_threshold_and_its_body_is_stable() -> None:
    event = parse_line(_line(prompt_tokens=3, completion_tokens=4, total_tokens=7, cb={"order": 1}))
    assert event is not None
    ids = {threshold_webhook_id("t", "k1", kind, bp) for kind in ("tokens", "cost") for bp in (8000, 9500)}
    assert len(ids) == 4 and threshold_webhook_id("t", "k1", "cost", 8000) in ids
    assert threshold_webhook_id("t", "k1", "cost", 8000) != threshold_webhook_id("u", "k1", "cost", 8000)
    assert all(i.isascii() and len(i) <= 128 for i in ids)
    crossing = Crossing.parse(b"cost:8000:1600001:2000000")
    assert crossing is not None
    body = json.loads(threshold_body(event, crossing))
    assert body == {"type": "budget_threshold", "event_id": "k1", "key_id": "k1", "sub": None, "budget": "cost",
                    "threshold": 0.8, "spent": {"amount": "1.600001", "currency": "USD"},
                    "limit": {"amount": "2", "currency": "USD"}, "cb": {"order": 1}}
    assert threshold_body(event, crossing) == threshold_body(event, crossing)
    assert Crossing.parse("cost:80x0:1:2") is None and Crossing.parse("other:1:1:1") is None


def test_cache_writes_are_priced_on_their_own_line() -> None:
    price = Price("USD", Decimal("3"), Decimal("0.3"), Decimal("15"), Decimal("15"), Decimal("3.75"))
    usage = TokenUsage(prompt=1000, completion=100, cached=200, cache_write=300)
    assert usage.lines() == {"input": 500, "cached_input": 200, "output": 100, "reasoning": 0, "cache_write": 300}
    # 500 × 3 + 200 × 0.3 + 300 × 3.75 + 100 × 15 = 4185 micro-units
    assert price.cost(usage) == Decimal("0.004185")
    assert Price.decode(price.encode()) == price
    assert price.bound_micros(1000, 0) == 3750  # the dearest input line bounds any mix
    free = Price("USD", Decimal("3"), Decimal("3"), Decimal("1"), Decimal("1"), Decimal("0"))
    assert free.cost(TokenUsage(prompt=10, completion=0, cache_write=10)) == 0


def test_a_messages_event_bills_cache_reads_and_writes_from_anthropics_usage() -> None:
    # Anthropic's input_tokens leave out cache reads and writes: the prompt is all three.
    line = _line(endpoint="messages", prompt_tokens=100, completion_tokens=10, cached_tokens=40,
                 cache_write_tokens=60)
    event = parse_line(line)
    assert event is not None and event.endpoint == "messages"
    counts = (event.prompt_tokens, event.cached_tokens, event.cache_write_tokens, event.total_tokens)
    assert counts == (200, 40, 60, 210)
    assert callback_payload(event, include_content=False)["usage"]["prompt_tokens_details"] == {
        "cached_tokens": 40, "cache_write_tokens": 60}


def test_count_tokens_lines_are_no_usage_event() -> None:
    assert parse_line(_line(endpoint="messages_count_tokens", reserved=0)) is None
