"""The identity mechanisms behind one protocol, and the one claims model minting, child minting and
verification share: what is minted is what is read, claim by claim."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import fields
from typing import Any

import pytest
from conftest import REPO

from dynaseal.config import DynasealConfig
from dynaseal.errors import Refusal
from dynaseal.keys.attenuation import ChainKey
from dynaseal.keys.dpop_binding import DpopBinding
from dynaseal.keys.identity import IdentityMechanism, JwsToken, Presentation, VerifyContext
from dynaseal.keys.jws_key import UnknownKid
from dynaseal.keys.key_claims import CHILD_CLAIMS, NATIVE_CLAIMS, ROOT_ONLY_CLAIMS, SEED_CLAIMS, KeyClaims, money
from dynaseal.keys.mint import HolderKey, SigningKey, mint, mint_seed_key, sign_claims
from dynaseal.keys.seed_key import SeedKey
from dynaseal.keys.tenants import Registry, build_registry
from dynaseal.keys.verification import MECHANISMS, check_bindings, verify_token
from dynaseal.policy.authorizer import Authorizer, AuthRequest

SECRET_ENV = "DYNASEAL_T_MECHANISMS_SEED_SECRET"
SECRET = "seed-secret-for-the-mechanism-tests-0123"
URL = "http://gw.test/v1/chat/completions"


@pytest.fixture(scope="module")
def signing_key() -> SigningKey:
    return SigningKey.generate("m-1")


@pytest.fixture(scope="module")
def registry(signing_key: SigningKey) -> Registry:
    cfg = DynasealConfig.model_validate({"tenants": [{
        "id": "t", "keys": [{"alg": "HS256", "secret_env": SECRET_ENV},
                            {"kid": signing_key.kid, "alg": "EdDSA", "public_jwk": signing_key.public_jwk()}],
        "limits": {"models": ["a", "b"], "max_tokens": 500, "budget_cost": "100", "max_chain_depth": 2},
        "upstream": {"currency": "EUR", "prices": {"a": {"input": "1.0", "output": "2.0"}}},
        "cors": {"origins": ["https://app.example"]}}]})
    return build_registry(cfg, env={SECRET_ENV: SECRET})


def payload(token: str) -> dict[str, Any]:
    part = token.split(".")[1]
    value: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return value


def test_every_mechanism_implements_the_one_protocol() -> None:
    assert [m.name for m in MECHANISMS] == ["chain", "seed", "jws", "dpop"]
    for mechanism in MECHANISMS:
        typed: IdentityMechanism = mechanism  # mypy checks the protocol; this checks the instances
        assert callable(typed.verify) and callable(typed.bind)


def test_each_token_kind_is_proved_by_exactly_one_mechanism(registry: Registry, signing_key: SigningKey) -> None:
    holder = HolderKey.generate()
    now = time.time()
    native = mint(signing_key, tenant="t", models=["a"], max_tokens=5, ttl=60, cnf=holder.cnf_jwk())
    tokens = {"seed": mint_seed_key("t", SECRET, model="a", max_tokens=5, ttl=60, event_id="e"),
              "jws": native, "chain": holder.child(native, uses=1)}
    ctx = VerifyContext(registry, now, lambda root: verify_token(f"{'.'.join(root.segments)}", registry, now))
    for kind, token in tokens.items():
        parsed = JwsToken.parse(token)
        proved = {m.name for m in MECHANISMS if m.verify(parsed, ctx) is not None}
        assert proved == {kind}, (kind, proved)


def test_a_kid_the_tenant_lacks_is_the_jws_mechanisms_unknown_kid(registry: Registry) -> None:
    stranger = mint(SigningKey.generate("m-9"), tenant="t", models=["a"], max_tokens=5, ttl=60)
    with pytest.raises(UnknownKid):
        verify_token(stranger, registry)
    seedless = JwsToken.parse(stranger)
    assert SeedKey().verify(seedless, VerifyContext(registry, time.time(), lambda r: pytest.fail())) is None
    assert ChainKey().verify(seedless, VerifyContext(registry, time.time(), lambda r: pytest.fail())) is None


def test_only_the_dpop_binding_checks_how_a_key_was_presented(registry: Registry, signing_key: SigningKey) -> None:
    holder = HolderKey.generate()
    bound = mint(signing_key, tenant="t", models=["a"], max_tokens=5, ttl=60, cnf=holder.cnf_jkt())
    key = verify_token(bound, registry)
    headers = {":authority": "gw.test", ":scheme": "http", **holder.headers(bound, "POST", URL)}
    presented = Presentation(bound, True, "POST", "/v1/chat/completions", headers)
    now = time.time()
    assert [m.name for m in MECHANISMS if m.bind(key, presented, registry, now) is not None] == ["dpop"]
    proof = check_bindings(key, presented, registry, now)
    assert proof is not None and proof.jkt == holder.jkt()
    with pytest.raises(Refusal, match="sender-constrained"):  # the same key as a bearer token
        DpopBinding().bind(key, Presentation(bound, False, "POST", "/v1/chat/completions", headers), registry, now)


def test_the_claims_model_is_what_verification_reads(registry: Registry, signing_key: SigningKey) -> None:
    holder = HolderKey.generate()
    claims = KeyClaims(iss="t", aud="dynaseal", iat=int(time.time()), nbf=int(time.time()),
                       exp=int(time.time()) + 60, jti="every-claim", models=["a"], max_tokens=7, sub="u-1",
                       budget=900, uses=3, rpm=5, event_id="ev-1", params={"temperature": {"max": 1.0}},
                       cb={"order": 1}, cnf=holder.cnf_jwk(), budget_cost=money("2.5", "EUR"),
                       origins=["https://app.example"])
    assert set(claims.payload()) == NATIVE_CLAIMS  # every native claim set once
    key = verify_token(sign_claims(signing_key, claims), registry)
    read = {"iss": key.tenant.id, "jti": key.jti, "exp": key.exp, "sub": key.sub, "models": key.models,
            "max_tokens": key.max_tokens, "budget": key.budget, "uses": key.uses, "rpm": key.rpm,
            "event_id": key.event_id, "cb": key.cb, "cnf": key.cnf_jkt, "budget_cost": key.budget_cost,
            "origins": key.origins, "params": key.param_limits["temperature"].max}
    assert read == {"iss": "t", "jti": "every-claim", "exp": claims.exp, "sub": "u-1", "models": frozenset({"a"}),
                    "max_tokens": 7, "budget": 900, "uses": 3, "rpm": 5, "event_id": "ev-1", "cb": {"order": 1},
                    "cnf": holder.jkt(), "budget_cost": 2_500_000, "origins": frozenset({"https://app.example"}),
                    "params": 1.0}


def test_mint_child_mint_and_the_seed_format_write_the_models_names(signing_key: SigningKey) -> None:
    holder = HolderKey.generate()
    parent = mint(signing_key, tenant="t", models=["a"], max_tokens=5, ttl=60, sub="u", budget=10, uses=2, rpm=3,
                  params={"allow": ["seed"]}, cb={"x": 1}, event_id="e", cnf=holder.cnf_jwk(), budget_cost="1",
                  currency="EUR")
    assert set(payload(parent)) == NATIVE_CLAIMS - {"origins"}
    child = holder.child(parent, models=["a"], max_tokens=2, budget=5, uses=1, rpm=1, params={"allow": ["seed"]},
                         cnf=holder.cnf_jkt())
    assert set(payload(child)) <= CHILD_CLAIMS and "prn" in payload(child)
    assert not set(payload(child)) & ROOT_ONLY_CLAIMS
    assert set(payload(mint_seed_key("t", SECRET, model="a", max_tokens=5, ttl=60, event_id=1))) == SEED_CLAIMS
    assert NATIVE_CLAIMS | {"prn"} == {spec.name for spec in fields(KeyClaims)}


def test_the_contracts_schema_names_the_models_claims() -> None:
    schema = json.loads((REPO / "contracts" / "dynamic-key.schema.json").read_text())["$defs"]
    assert set(schema["native"]["properties"]) | set(schema["limits"]["properties"]) == NATIVE_CLAIMS
    assert set(schema["seed"]["properties"]) == SEED_CLAIMS


def test_the_authorizer_runs_the_mechanisms_end_to_end(registry: Registry, signing_key: SigningKey) -> None:
    holder = HolderKey.generate()
    parent = mint(signing_key, tenant="t", models=["a"], max_tokens=50, ttl=60, cnf=holder.cnf_jwk())
    child = holder.child(parent, max_tokens=5, cnf=holder.cnf_jkt())
    body = json.dumps({"model": "a", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}).encode()
    authorizer = Authorizer(registry)
    headers = {":authority": "gw.test", ":scheme": "http", **holder.headers(child, "POST", URL)}
    allowed = asyncio.run(authorizer.decide(AuthRequest("POST", "/v1/chat/completions", headers, body)))
    assert allowed.allowed, allowed
    bearer = {":authority": "gw.test", ":scheme": "http", "authorization": f"Bearer {child}"}
    refused = asyncio.run(authorizer.decide(AuthRequest("POST", "/v1/chat/completions", bearer, body)))
    assert (refused.status, refused.code) == (401, "invalid_dpop_proof")
