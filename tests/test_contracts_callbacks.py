"""The callback bodies cross from the consumer to the issuer through one set of models (dynaseal.contracts):
what the consumer builds, the issuer parses and stores; what the models refuse is a clear 400."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import select
from test_issuer_support import assert_error, callback_secret, issuer_client, signed_callback

from callback_consumer.batches import acknowledged, batch_body
from dynaseal.config import DynasealConfig
from dynaseal.contracts.callback_body import (
    BatchCallback,
    BudgetThresholdCallback,
    ContentBlockedCallback,
    UsageCallback,
    parse_callback,
)
from dynaseal.money.budget_thresholds import Crossing, threshold_body
from dynaseal.pb import UsageEvent
from dynaseal.usage.callbacks import CallbackSigner, callback_body
from issuer_api.app import issuer_state
from issuer_api.store import Callback

PLAIN = UsageEvent(request_id="rt-plain", tenant="t", jti="key-1", event_id="evt-1", prompt_tokens=12,
                   completion_tokens=30, total_tokens=42, cached_tokens=2, reasoning_tokens=5, model="gpt-4o-mini",
                   status=200, stream=True, started_at="2026-12-01T08:00:00.000Z", duration_ms=812, cost="0.000123",
                   currency="USD", usage_source="upstream", content="héllo \u2028 \"quoted\"",
                   cb_json='{"order": 7, "tags": ["a", null, 2.5]}', sub="client1")
ROUTED_CHILD = UsageEvent(request_id="rt-routed", tenant="t", jti="child-2", event_id="evt-2", total_tokens=9,
                          unpriced=True, upstreams_tried="primary,backup", status=503, endpoint="messages",
                          chain=["root-0", "child-2"], root_jti="root-0", cb_json="{not json")
BLOCKED = UsageEvent(request_id="rt-blocked", tenant="t", jti="key-3", event_id="evt-3", content_rule="no-secrets",
                     status=400, model="gpt-4o-mini", started_at="2026-12-01T08:00:01.000Z")
EVENTS = {"plain": PLAIN, "routed_child": ROUTED_CHILD, "blocked": BLOCKED}


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DynasealConfig, TestClient]]:
    cfg, client = issuer_client(tmp_path_factory.mktemp("contracts-callbacks"))
    yield cfg, client
    client.__exit__(None, None, None)


def deliver(issuer: tuple[DynasealConfig, TestClient], webhook_id: str, body: bytes) -> dict[str, Any]:
    """POST the bytes as the consumer does: signed with the tenant's secret by the consumer's own signer."""
    signer = CallbackSigner.from_secret(callback_secret(issuer[0]))
    reply = issuer[1].post("/v1/callback/usage", content=body, headers=signer.headers(webhook_id, body))
    assert reply.status_code == 200, reply.text
    answer: dict[str, Any] = reply.json()
    return answer


def stored_row(client: TestClient, webhook_id: str) -> Callback:
    with issuer_state(client.app).sessions() as db:  # type: ignore[arg-type]
        row = db.scalar(select(Callback).where(Callback.webhook_id == webhook_id))
    assert row is not None
    return row


@pytest.mark.parametrize("include_content", [True, False])
@pytest.mark.parametrize("name", sorted(EVENTS))
def test_a_consumer_built_body_parses_into_the_model_it_was_built_from(name: str, include_content: bool) -> None:
    event = EVENTS[name]
    body = callback_body(event, include_content)
    parsed = parse_callback(orjson.loads(body))
    # The same model, the same values, and re-serialised the same bytes: nothing lost or renamed on the way.
    assert type(parsed) is (ContentBlockedCallback if event.content_rule else UsageCallback)
    assert orjson.dumps(parsed.wire()) == body
    assert parsed.model_extra == {}  # every member the consumer sends is one the model declares


def test_the_plain_usage_callback_round_trips_into_the_issuers_row(issuer: tuple[DynasealConfig, TestClient]) -> None:
    body = callback_body(PLAIN, include_content=True)
    assert deliver(issuer, PLAIN.request_id, body)["status"] == "stored"
    row = stored_row(issuer[1], PLAIN.request_id)
    assert (row.event_id, row.jti, row.sub, row.tokens) == ("evt-1", "key-1", "client1", 42)
    assert (row.cost_amount, row.cost_currency, row.content) == ("0.000123", "USD", PLAIN.content)
    assert row.usage == {"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42,
                         "prompt_tokens_details": {"cached_tokens": 2, "cache_write_tokens": 0},
                         "completion_tokens_details": {"reasoning_tokens": 5}}
    assert row.payload == orjson.loads(body)


def test_a_routed_child_keys_callback_keeps_its_family_and_upstreams(
        issuer: tuple[DynasealConfig, TestClient]) -> None:
    body = callback_body(ROUTED_CHILD, include_content=False)
    deliver(issuer, ROUTED_CHILD.request_id, body)
    row = stored_row(issuer[1], ROUTED_CHILD.request_id)
    assert (row.jti, row.tokens, row.cost_amount) == ("child-2", 9, None)
    parsed = parse_callback(row.payload)
    assert isinstance(parsed, UsageCallback)
    assert (parsed.upstreams_tried, parsed.upstream, parsed.chain, parsed.root_key_id, parsed.cb) == (
        ["primary", "backup"], None, ["root-0", "child-2"], "root-0", {})


def test_content_blocked_threshold_and_batch_bodies_are_parsed_by_their_models(
        issuer: tuple[DynasealConfig, TestClient]) -> None:
    assert deliver(issuer, BLOCKED.request_id, callback_body(BLOCKED, include_content=True))["status"] == "noted"
    threshold = threshold_body(PLAIN, Crossing("cost", 8000, 801_000, 1_000_000))
    parsed = parse_callback(orjson.loads(threshold))
    assert isinstance(parsed, BudgetThresholdCallback) and parsed.threshold == 0.8
    assert deliver(issuer, "thr_contracts", threshold)["status"] == "noted"
    items = [("rt-batch-1", orjson.loads(callback_body(PLAIN, False)) | {"request_id": "rt-batch-1"}),
             ("rt-batch-2", orjson.loads(callback_body(BLOCKED, False)))]
    webhook_id, body = batch_body(items)
    batch = parse_callback(orjson.loads(body))
    assert isinstance(batch, BatchCallback) and [e.id for e in batch.events] == ["rt-batch-1", "rt-batch-2"]
    reply = deliver(issuer, webhook_id, body)
    assert reply["results"] == {"rt-batch-1": "stored", "rt-batch-2": "noted"}
    # The issuer's answer, read by the consumer through the same contract: the stored event is acknowledged.
    assert acknowledged(orjson.dumps(reply), ["rt-batch-1", "rt-batch-2"]) == {"rt-batch-1"}


@pytest.mark.parametrize("reply", [b"", b"not json", b"[]", b"{}", b'{"results": []}', b'{"results": {"a": 5}}',
                                   b'{"results": "stored"}'])
def test_a_batch_reply_outside_the_contract_acknowledges_nothing(reply: bytes) -> None:
    assert acknowledged(reply, ["a"]) == set()


def test_a_sender_cannot_build_a_member_the_model_does_not_declare() -> None:
    with pytest.raises(TypeError, match="no member"):
        UsageCallback.body(type="usage", key="a typo of key_id")
    assert UsageCallback.body(type="usage", key_id="k") == {"type": "usage", "key_id": "k"}


def test_the_seeds_minimal_body_still_parses() -> None:
    parsed = parse_callback({"event_id": 111, "content": "hi", "tokens": 5})
    assert isinstance(parsed, UsageCallback) and (parsed.event_id, parsed.tokens) == ("111", 5)


BAD_BODIES = [
    ({"event_id": "e", "tokens": True}, "tokens"),
    ({"event_id": "e", "tokens": -1}, "tokens"),
    ({"event_id": "e", "tokens": "12"}, "tokens"),
    ({"event_id": "e", "usage": {"prompt_tokens": -3}}, "usage.prompt_tokens"),
    ({"event_id": "e", "usage": "x"}, "usage"),
    ({"event_id": "e", "content": None, "cost": {"amount": "1e999999", "currency": "USD"}}, "cost.amount"),
    ({"event_id": "e", "cost": {"amount": "-1", "currency": "USD"}}, "cost.amount"),
    ({"event_id": "e", "cost": {"amount": "NaN", "currency": "USD"}}, "cost.amount"),
    ({"event_id": "e", "cost": {"amount": "0.1", "currency": "usd"}}, "cost.currency"),
    ({"event_id": "e", "cost": {"amount": "1" * 65, "currency": "USD"}}, "cost.amount"),
    ({"event_id": "e" * 257}, "event_id"),
    ({"event_id": "e", "key_id": "k" * 129}, "key_id"),
    ({"event_id": "e", "content": 5}, "content"),
    ({"type": "no_such_type"}, "type"),
    ({"type": ["usage"]}, "type"),
    ({"type": "batch", "events": []}, "events"),
    ({"type": "batch", "events": [{"id": "a b", "event": {}}]}, "events.0.id"),
    ({"type": "batch", "events": [{"id": "a", "event": []}]}, "events.0.event"),
    ({"type": "batch", "events": [{"id": "a", "event": {}}] * 1001}, "events"),
]


@pytest.mark.parametrize(("payload", "param"), BAD_BODIES, ids=[p for _, p in BAD_BODIES])
def test_a_malformed_body_is_refused_by_the_model_and_a_clear_400_at_the_issuer(
        issuer: tuple[DynasealConfig, TestClient], payload: dict[str, Any], param: str) -> None:
    with pytest.raises(ValidationError):
        parse_callback(payload)
    body, headers = signed_callback(callback_secret(issuer[0]), payload)
    error = assert_error(issuer[1].post("/v1/callback/usage", content=body, headers=headers), 400,
                         "invalid_request_error")
    assert error["param"] is not None and error["param"].startswith(param)
    # The refusal names the member, never echoes its value (a body may carry content or secrets).
    values = [v for v in [*payload.values(), *(payload.get("cost") or {}).values()] if isinstance(v, str)]
    assert not [v for v in values if len(v) > 3 and v in error["message"]]


def test_one_bad_event_in_a_batch_is_refused_alone(issuer: tuple[DynasealConfig, TestClient]) -> None:
    good = orjson.loads(callback_body(PLAIN, False)) | {"request_id": "rt-batch-good"}
    webhook_id, body = batch_body([("rt-batch-good", good), ("rt-batch-bad", {"event_id": "e", "tokens": -5})])
    assert deliver(issuer, webhook_id, body)["results"] == {"rt-batch-good": "stored", "rt-batch-bad": "refused"}
