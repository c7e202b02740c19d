"""Content rules in the decision: refused before admission, named in metadata and metrics; reloads."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest
from prometheus_client import REGISTRY

from authz_service.envoy_adapter import deny_response
from authz_service.server import AuthzOptions, AuthzServer
from authz_service.servicer import AuthorizationServicer
from dynaseal.config import ConfigError, load_config
from dynaseal.keys.mint import SigningKey, mint
from dynaseal.keys.tenants import build_registry
from dynaseal.ledger.admission import Admission
from dynaseal.ledger.outcomes import Admitted, Outcome
from dynaseal.policy.authorizer import Authorizer, AuthRequest
from dynaseal.policy.decision import Decision

TENANT = "shop"
KEY = SigningKey.generate("shop-1")
RULES: list[dict[str, Any]] = [{"builtin": "payment_card"},
                               {"name": "hosts", "literals": ["db.shop.internal"], "where": ["user"]}]


class RecordingQuota:
    """Admits everything and remembers each admission (a refused request must never get here)."""

    def __init__(self) -> None:
        self.admitted: list[str] = []

    async def admit(self, admission: Admission, now_ms: int | None = None) -> Outcome:
        self.admitted.append(admission.request_id)
        return Admitted()

    async def revoked_level(self, tenant: str, path: tuple[str, ...]) -> int:
        return 0


def write_config(directory: Path, rules: list[dict[str, Any]]) -> Path:
    path = directory / "dynaseal.yaml"
    raw = {"gateway": {"data_dir": str(directory)}, "tenants": [
        {"id": TENANT, "keys": [{"kid": KEY.kid, "alg": "EdDSA", "public_jwk": KEY.public_jwk()}],
         "limits": {"models": ["gpt-4o-mini"], "max_tokens": 100, "content_rules": rules}}]}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def request(text: str, role: str = "user") -> AuthRequest:
    token = mint(KEY, tenant=TENANT, models=["gpt-4o-mini"], max_tokens=50, ttl=60)
    body = {"model": "gpt-4o-mini", "max_tokens": 10, "messages": [{"role": role, "content": text}]}
    return AuthRequest("POST", "/v1/chat/completions",
                       {"authorization": f"Bearer {token}", "content-type": "application/json"}, orjson.dumps(body))


@pytest.fixture
def authorizer(tmp_path: Path) -> Authorizer:
    return Authorizer(build_registry(load_config(write_config(tmp_path, RULES))), quota=RecordingQuota())


def decide(authorizer: Authorizer, req: AuthRequest) -> Decision:
    return asyncio.run(authorizer.decide(req))


def test_a_blocked_request_is_refused_before_admission(authorizer: Authorizer) -> None:
    quota = authorizer.quota
    assert isinstance(quota, RecordingQuota)
    decision = decide(authorizer, request("card 4111 1111 1111 1111"))
    assert (decision.allowed, decision.status, decision.code) == (False, 400, "content_blocked")
    assert "payment_card" in decision.message and "4111" not in decision.message
    assert decision.metadata == {"content_rule": "payment_card", "tenant": TENANT, "model": "gpt-4o-mini",
                                 "event_id": decision.jti}  # no text: the key's and the rule's names only
    assert quota.admitted == []  # no use, no rpm slot, no reservation
    body = orjson.loads(decision.error_body())["error"]
    assert (body["code"], body["type"]) == ("content_blocked", "invalid_request_error")
    assert decide(authorizer, request("card 4111 1111 1111 1112")).allowed  # Luhn fails: not a card
    assert len(quota.admitted) == 1


def test_a_rule_with_where_only_looks_there(authorizer: Authorizer) -> None:
    assert decide(authorizer, request("use db.shop.internal")).metadata["content_rule"] == "hosts"
    assert decide(authorizer, request("use db.shop.internal", role="system")).allowed


def test_the_denial_carries_the_rule_to_the_access_log(authorizer: Authorizer) -> None:
    decision = decide(authorizer, request("use db.shop.internal"))
    fields = deny_response(decision).dynamic_metadata.fields
    assert fields["deny_code"].string_value == "content_blocked"
    assert fields["content_rule"].string_value == "hosts"
    assert fields["tenant"].string_value == TENANT


def test_blocked_requests_are_counted_per_tenant_and_rule(authorizer: Authorizer) -> None:
    def count() -> float:
        return REGISTRY.get_sample_value("dynaseal_authz_content_blocked_total",
                                         {"tenant": TENANT, "rule": "hosts"}) or 0.0

    before = count()
    servicer = AuthorizationServicer(authorizer)
    for text in ("db.shop.internal", "fine", "again db.shop.internal"):
        req = request(text)
        check = CheckRequest()
        http = check.attributes.request.http
        http.method, http.path, http.raw_body = req.method, req.path, req.body
        http.headers.update(dict(req.headers))
        asyncio.run(servicer.Check(check, None))
    assert count() == before + 2


def test_bad_rules_fail_the_load_with_the_rule_and_reason(tmp_path: Path) -> None:
    path = write_config(tmp_path, [{"name": "greedy", "patterns": ["(?=x)"]}])
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert "content_rules.0" in message and "'greedy'" in message and "does not compile" in message


def test_a_reload_with_a_bad_rule_keeps_the_last_good_rules(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_config(tmp_path, RULES)
    server = AuthzServer(AuthzOptions(str(path)))
    server.servicer.authorizer.quota = None  # no Redis here: the rules are under test
    running = server.servicer.authorizer
    assert decide(running, request("db.shop.internal")).code == "content_blocked"

    write_config(tmp_path, [{"name": "hosts", "literals": ["db.shop.internal"], "where": ["user", "prompt"]}])
    with caplog.at_level(logging.ERROR, logger="dynaseal.authz"):
        server.reload()
    assert server.servicer.authorizer is running
    assert decide(server.servicer.authorizer, request("4111111111111111")).code == "content_blocked"
    rejected = [r for r in caplog.records if "reload rejected" in r.getMessage()]
    assert rejected and "'hosts'" in rejected[0].error and "prompt" in rejected[0].error  # type: ignore[attr-defined]

    write_config(tmp_path, [{"name": "other", "literals": ["zzz"]}])  # a good config is taken
    server.reload()
    server.servicer.authorizer.quota = None
    assert decide(server.servicer.authorizer, request("4111111111111111")).allowed
    assert decide(server.servicer.authorizer, request("zzz")).metadata["content_rule"] == "other"


def test_a_scan_that_cannot_finish_fails_closed_with_503(authorizer: Authorizer,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from dataclasses import replace

    from dynaseal.content.rules import CompiledRules
    from dynaseal.tenant_config import ContentRules

    class GaveUp:
        """What RE2::Set::Match answers when its DFA runs out of memory: no match at all."""

        def Match(self, text: bytes) -> None:
            return None

    tenant = authorizer.registry.get(TENANT)
    assert tenant is not None
    rules = tenant.limits.content_rules.compiled
    broken = CompiledRules(rules.rules, {name: replace(found, matcher=GaveUp()) for name, found in rules.sets.items()})
    monkeypatch.setattr(ContentRules, "compiled", property(lambda self: broken))
    decision = decide(authorizer, request("hello"))
    assert (decision.allowed, decision.status, decision.code, decision.reason) == (
        False, 503, "authz_unavailable", "internal_error")
    assert authorizer.quota.admitted == []  # type: ignore[union-attr]
