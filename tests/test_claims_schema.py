"""contracts/dynamic-key.schema.json: the claims of every key Dynaseal's own helpers mint validate against it
(native, seed, child; with every optional claim), and keys the gateway refuses for their shape do not."""

from __future__ import annotations

import base64
import json
from typing import Any

import jsonschema
import pytest
from conftest import REPO

from dynaseal.keys.mint import HolderKey, SigningKey, mint, mint_seed_key

SCHEMA = json.loads((REPO / "contracts" / "dynamic-key.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker())


def claims(token: str) -> dict[str, Any]:
    part = token.split(".")[1]
    payload: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return payload


def test_the_schema_is_a_valid_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_minted_keys_of_every_format_validate() -> None:
    issuer = SigningKey.generate("k1")
    holder = HolderKey.generate("ES256")
    plain = mint(issuer, tenant="acme", models=["gpt-4o-mini"], max_tokens=100, ttl=600)
    full = mint(issuer, tenant="acme", models=["gpt-4o-mini", "gpt-4o"], max_tokens=100, ttl=600, sub="u-1",
                budget=5000, uses=3, rpm=10, params={"temperature": {"min": 0, "max": 1}, "allow": ["stop"]},
                cb={"order": 7}, event_id="ev-1", budget_cost="2.50", cnf=holder.cnf_jwk())
    bound = mint(issuer, tenant="acme", models=["m"], max_tokens=1, ttl=60, cnf=holder.cnf_jkt())
    seed = mint_seed_key("671249a93f1cf2f8bf9b2b82", "4d72c063-881f-45fa-85ab-3375c84f5dd7", model="deepseek-chat",
                         max_tokens=20, ttl=60, event_id=42)
    child = holder.child(full, models=["gpt-4o-mini"], uses=1, max_tokens=10)
    grandchild = holder.child(holder.child(full, cnf=holder.cnf_jwk()))
    for name, token in {"plain": plain, "full": full, "bound": bound, "seed": seed, "child": child,
                        "grandchild": grandchild}.items():
        errors = list(VALIDATOR.iter_errors(claims(token)))
        assert not errors, (name, [e.message for e in errors])
    # Each validates as exactly its own format (oneOf): a child is not also a native key.
    native_only = {"$ref": "#/$defs/native", "$defs": SCHEMA["$defs"]}
    assert not jsonschema.Draft202012Validator(native_only).is_valid(claims(child))


def test_keys_issued_by_the_issuer_api_validate(tmp_path: Any) -> None:
    from fastapi.testclient import TestClient
    from test_issuer_support import bearer, issuer_config, login

    from issuer_api.app import create_app

    with TestClient(create_app(issuer_config(tmp_path))) as client:
        auth = bearer(login(client, "client1")["access_token"])
        holder = HolderKey.generate()
        for body in (None, {"holder_jwk": holder.public_jwk()}, {"dpop_jkt": holder.jkt(), "uses": 1}):
            created = client.post("/key/create", headers=auth, json=body)
            assert created.status_code == 200, created.text
            assert VALIDATOR.is_valid(claims(created.json()["token"]))


@pytest.mark.parametrize("bad", [
    {"iss": "acme", "aud": "dynaseal"},                                          # no exp
    {"iss": "acme", "aud": "dynaseal", "exp": 1, "max_tokens": 0},               # not a positive count
    {"iss": "acme", "aud": "dynaseal", "exp": 1, "uses": True},
    {"iss": "acme", "aud": "dynaseal", "exp": 1, "models": "gpt-4o"},
    {"iss": "acme", "aud": "dynaseal", "exp": 1, "cnf": {"jwk": {"kty": "EC", "crv": "P-256", "x": "a", "y": "b",
                                                                 "d": "private"}}},
    {"iss": "acme", "aud": "dynaseal", "exp": 1, "cnf": {"jkt": "short"}},
    {"iss": "acme", "aud": "dynaseal", "exp": 1, "origins": ["*"]},
    {"iss": "acme", "aud": "dynaseal", "exp": 1, "origins": ["https://app.example/"]},
    {"iss": "acme", "aud": "dynaseal", "exp": 1, "budget_cost": {"amount": "1e3", "currency": "USD"}},
    {"api-key": "t", "model": "m", "max_tokens": 5, "expiring": 1, "uses": 1},     # seed with a native claim
    {"iss": "acme", "aud": "dynaseal", "exp": 1, "jti": "c", "prn": "a.b.c", "event_id": "mine"},  # child
])
def test_malformed_claims_are_refused(bad: dict[str, Any]) -> None:
    assert not VALIDATOR.is_valid(bad)
