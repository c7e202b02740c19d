"""Answers the gateway gives itself (the model list, a give-back) are neither allows nor refusals."""

from __future__ import annotations

import asyncio

import orjson
from conftest import TenantKeys, acme_key
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest
from prometheus_client import REGISTRY

from authz_service.servicer import AuthorizationServicer
from dynaseal.policy import authorizer as authorizer_module
from dynaseal.policy.authorizer import Authorizer
from dynaseal.policy.give_back import reply


def _count(result: str, code: str) -> float:
    return REGISTRY.get_sample_value("dynaseal_authz_decisions_total", {"result": result, "code": code}) or 0.0


def _check(method: str, path: str, token: str) -> CheckRequest:
    check = CheckRequest()
    http = check.attributes.request.http
    http.method, http.path = method, path
    http.headers.update({"authorization": f"Bearer {token}"})
    return check


def test_the_model_list_is_a_local_answer_not_a_deny(authorizer: Authorizer, test_keys: TenantKeys) -> None:
    servicer = AuthorizationServicer(authorizer)
    denies, answers = _count("deny", "ok"), _count("answer", "ok")
    response = asyncio.run(servicer.Check(_check("GET", "/v1/models", acme_key(test_keys)), None))
    assert response.denied_response.status.code == 200  # Envoy's local reply carries the list
    listed = orjson.loads(response.denied_response.body)
    assert listed["object"] == "list" and [m["id"] for m in listed["data"]] == ["gpt-4o-mini"]
    assert _count("answer", "ok") == answers + 1
    assert _count("deny", "ok") == denies  # regression: it was counted as a refusal


def test_a_refused_model_list_is_still_a_deny(authorizer: Authorizer) -> None:
    servicer = AuthorizationServicer(authorizer)
    denies = _count("deny", "invalid_api_key")
    asyncio.run(servicer.Check(_check("GET", "/v1/models", "not-a-key"), None))
    assert _count("deny", "invalid_api_key") == denies + 1


def test_decisions_say_what_they_are(authorizer: Authorizer, test_keys: TenantKeys) -> None:
    from dynaseal.policy.authorizer import AuthRequest

    listed = asyncio.run(authorizer.decide(AuthRequest("GET", "/v1/models",
                                                       {"authorization": f"Bearer {acme_key(test_keys)}"}, b"")))
    assert (listed.local, listed.result, listed.allowed) == (True, "answer", False)
    assert reply(200, True, "r").result == "answer"
    assert reply(404, False, "r").result == "deny"  # a bad give-back token is told the path does not exist


def test_extract_token_is_gone() -> None:
    """One way to read the key from a request: `extract_credential` (the dead twin was removed)."""
    assert not hasattr(authorizer_module, "extract_token")
