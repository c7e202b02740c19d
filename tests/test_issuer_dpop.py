"""issuer_api binds minted keys to the client's key: `dpop_jkt`, `holder_jwk`, or a DPoP proof on the request."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from test_issuer_support import assert_error, bearer, issuer_config, login

from dynaseal.config import DynasealConfig
from dynaseal.keys.mint import HolderKey
from dynaseal.keys.tenants import build_registry
from dynaseal.keys.verification import verify_token
from issuer_api.app import create_app

URL = "http://testserver/key/create"


def started(cfg: DynasealConfig) -> TestClient:
    client = TestClient(create_app(cfg))
    client.__enter__()
    return client


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DynasealConfig, TestClient]]:
    cfg = issuer_config(tmp_path_factory.mktemp("issuer-dpop"))
    client = started(cfg)
    yield cfg, client
    client.__exit__(None, None, None)


@pytest.fixture(scope="module")
def auth(issuer: tuple[DynasealConfig, TestClient]) -> dict[str, str]:
    return bearer(login(issuer[1], "client1")["access_token"])


def test_each_way_of_binding_gives_the_right_cnf(issuer: tuple[DynasealConfig, TestClient],
                                                 auth: dict[str, str]) -> None:
    cfg, client = issuer
    holder = HolderKey.generate("ES256")
    registry = build_registry(cfg)
    by_jkt = client.post("/key/create", headers=auth, json={"dpop_jkt": holder.jkt()}).json()
    by_jwk = client.post("/key/create", headers=auth, json={"holder_jwk": {**holder.public_jwk(), "kid": "x"}}).json()
    by_proof = client.post("/key/create", headers={**auth, "DPoP": holder.proof("POST", URL)}).json()
    plain = client.post("/key/create", headers=auth).json()
    for created in (by_jkt, by_jwk, by_proof):
        assert verify_token(created["token"], registry).cnf_jkt == holder.jkt()
    assert by_jwk["scope"]["cnf"] == {"jwk": holder.public_jwk()}  # the public members only
    assert verify_token(by_jwk["token"], registry).holder is not None
    assert verify_token(by_proof["token"], registry).holder is None
    assert verify_token(plain["token"], registry).cnf_jkt is None and "cnf" not in plain["scope"]


def test_unusable_bindings_are_refused(issuer: tuple[DynasealConfig, TestClient], auth: dict[str, str]) -> None:
    _, client = issuer
    holder, other = HolderKey.generate(), HolderKey.generate()
    private = {**holder.public_jwk(), "d": "AAAA"}
    for body, code in (({"dpop_jkt": "too-short"}, "invalid_request_error"),
                       ({"dpop_jkt": holder.jkt(), "holder_jwk": holder.public_jwk()}, "invalid_request_error"),
                       ({"holder_jwk": {"kty": "RSA", "n": "x", "e": "AQAB"}}, "invalid_request_error"),
                       ({"holder_jwk": private}, "invalid_request_error")):
        assert_error(client.post("/key/create", headers=auth, json=body), 400, code)
    # A proof names its key: naming another one next to it is a contradiction, not a choice.
    mismatch = client.post("/key/create", headers={**auth, "DPoP": holder.proof("POST", URL)},
                           json={"holder_jwk": other.public_jwk()})
    assert_error(mismatch, 400, "dpop_key_mismatch")
    for proof in (holder.proof("GET", URL), holder.proof("POST", "http://testserver/key/revoke"),
                  holder.proof("POST", URL, now=0), "not.a.proof"):
        assert_error(client.post("/key/create", headers={**auth, "DPoP": proof}), 400, "invalid_dpop_proof")


def test_a_tenant_that_requires_dpop_gets_only_bound_keys(tmp_path_factory: pytest.TempPathFactory) -> None:
    cfg = issuer_config(tmp_path_factory.mktemp("issuer-strict"))
    tenants = tuple(t.model_copy(update={"limits": t.limits.model_copy(update={"require_dpop": True})})
                    for t in cfg.tenants)
    client = started(cfg.model_copy(update={"tenants": tenants}))
    try:
        auth = bearer(login(client, "client1")["access_token"])
        assert_error(client.post("/key/create", headers=auth), 400, "dpop_required")
        holder = HolderKey.generate()
        assert client.post("/key/create", headers=auth, json={"dpop_jkt": holder.jkt()}).status_code == 200
    finally:
        client.__exit__(None, None, None)
