"""A content refusal as the tenant hears of it: decision → access-log line → event → callback body, no text."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
from test_usage_record import access_log_format, authz_namespace, envoy_writes

from dynaseal.config import DynasealConfig
from dynaseal.contracts import usage_record
from dynaseal.keys.mint import SigningKey, mint
from dynaseal.keys.tenants import build_registry
from dynaseal.policy.authorizer import Authorizer, AuthRequest
from dynaseal.policy.decision import Decision
from dynaseal.usage.callbacks import callback_body, callback_payload
from dynaseal.usage.events import parse_line

KEY = SigningKey.generate("cb-1")
CARD = "4111 1111 1111 1111"


def config() -> DynasealConfig:
    return DynasealConfig.model_validate({"tenants": [{
        "id": "acme", "keys": [{"kid": KEY.kid, "alg": "EdDSA", "public_jwk": KEY.public_jwk()}],
        "limits": {"models": ["gpt-4o-mini"], "content_rules": [{"builtin": "payment_card"}]}}]})


def decide(cfg: DynasealConfig, token: str, text: str) -> Decision:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], "max_tokens": 50}
    request = AuthRequest("POST", "/v1/chat/completions", {"authorization": f"Bearer {token}"}, orjson.dumps(body))
    return asyncio.run(Authorizer(build_registry(cfg, fetch_new_jwks=False), quota=None).decide(request))


def logged(cfg: DynasealConfig, decision: Decision, tmp_path: Path) -> bytes:
    return envoy_writes(access_log_format(cfg, tmp_path),
                        {usage_record.AUTHZ_NAMESPACE: authz_namespace(decision)}, status=decision.status)


def test_a_content_refusal_becomes_a_blocked_event_and_callback(tmp_path: Path) -> None:
    cfg = config()
    token = mint(KEY, tenant="acme", models=["gpt-4o-mini"], max_tokens=50, ttl=60, sub="user-7",
                 cb={"order": 17}, event_id="ev-1")
    decision = decide(cfg, token, f"pay with {CARD}")
    assert decision.code == "content_blocked"
    line = logged(cfg, decision, tmp_path)
    assert orjson.loads(line)["content_rule"] == "payment_card"
    event = parse_line(line, shipped_at_ms=1)
    assert event is not None
    assert (event.content_rule, event.tenant, event.jti, event.event_id, event.sub, event.model) == (
        "payment_card", "acme", decision.jti, "ev-1", "user-7", "gpt-4o-mini")
    assert (event.request_id, event.status, event.usage_source) == (decision.request_id, 400, "none")
    assert (event.reserved, event.total_tokens, event.cost_micros, event.HasField("content")) == (0, 0, 0, False)
    payload = callback_payload(event, include_content=True)
    assert payload["type"] == "content_blocked" and payload["rule"] == "payment_card"
    assert (payload["event_id"], payload["key_id"], payload["sub"], payload["cb"]) == (
        "ev-1", decision.jti, "user-7", {"order": 17})
    assert (payload["content"], payload["tokens"], payload["request_id"]) == ("", 0, decision.request_id)
    assert b"4111" not in line and b"4111" not in callback_body(event, include_content=True)


def test_other_refusals_still_make_no_event(tmp_path: Path) -> None:
    cfg = config()
    decision = decide(cfg, mint(KEY, tenant="acme", models=["gpt-4o"], max_tokens=50, ttl=60), "hi")
    assert decision.code == "model_not_allowed"
    assert parse_line(logged(cfg, decision, tmp_path)) is None


def test_a_blocked_line_without_its_rule_or_key_is_no_event() -> None:
    base = {"deny_code": "content_blocked", "code": 400, "tenant": "acme", "jti": "j", "content_rule": "r",
            "request_id": "11111111-2222-3333-4444-555555555555", "details": "ext_authz_denied"}
    assert parse_line(orjson.dumps(base)) is not None
    for missing in ("content_rule", "tenant", "jti"):
        assert parse_line(orjson.dumps({**base, missing: None})) is None
    assert parse_line(orjson.dumps({**base, "deny_code": "invalid_api_key"})) is None


def test_the_bundled_issuer_notes_a_blocked_callback_without_storing_usage(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from sqlalchemy import func, select
    from test_issuer_support import callback_secret, issuer_client, signed_callback

    from issuer_api.app import issuer_state
    from issuer_api.store import Callback

    cfg, client = issuer_client(tmp_path)
    try:
        payload = {"type": "content_blocked", "rule": "payment_card", "event_id": "e", "content": "", "tokens": 0,
                   "key_id": "jti-blocked", "request_id": "r-1", "status": 400}
        body, headers = signed_callback(callback_secret(cfg), payload)
        reply = client.post("/v1/callback/usage", content=body, headers=headers)
        assert reply.status_code == 200 and reply.json()["status"] == "noted", reply.text
        assert "content blocked: key_id=jti-blocked rule=payment_card" in capsys.readouterr().out
        with issuer_state(client.app).sessions() as db:  # type: ignore[arg-type]
            assert db.scalar(select(func.count(Callback.id))) == 0  # not a usage row
    finally:
        client.__exit__(None, None, None)
