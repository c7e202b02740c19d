"""Sender-constrained keys (RFC 9449): thumbprints and proofs against published vectors, and every way a
proof can be wrong, decided by the authorizer (no Redis: the replay cache is tested end to end)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from typing import Any

import orjson
import pytest
from keyfactory import b64, raw_token

from dynaseal.config import DynasealConfig
from dynaseal.keys.dpop import (
    DpopRefusal,
    access_token_hash,
    normalize_url,
    request_url,
    thumbprint,
    verify_proof,
)
from dynaseal.keys.mint import HolderKey, SigningKey, mint
from dynaseal.keys.tenants import build_registry
from dynaseal.policy.authorizer import Authorizer, AuthRequest, headers_to_strip
from dynaseal.policy.decision import Decision

URL = "http://gw.test/v1/chat/completions"
BODY = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10})

# RFC 7638 §3.1: the RSA key and the thumbprint the RFC publishes for it.
RFC7638_RSA = {
    "kty": "RSA", "e": "AQAB", "alg": "RS256", "kid": "2011-04-29",
    "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiF"
         "V4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9"
         "c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1"
         "jF44-csFCur-kEgU8awapJzKnqDKgw",
}
# RFC 9449 Figure 2 (the example proof, line breaks removed) and the jkt §6.1 publishes for its key.
RFC9449_PROOF = (
    "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6IkVTMjU2IiwiandrIjp7Imt0eSI6IkVDIiwieCI6Imw4dEZyaHgtMzR0VjNoUklDUkRZOXpDa0RscE"
    "JoRjQyVVFVZldWQVdCRnMiLCJ5IjoiOVZFNGpmX09rX282NHpiVFRsY3VOSmFqSG10NnY5VERWclUwQ2R2R1JEQSIsImNydiI6IlAtMjU2In19"
    ".eyJqdGkiOiItQndDM0VTYzZhY2MybFRjIiwiaHRtIjoiUE9TVCIsImh0dSI6Imh0dHBzOi8vc2VydmVyLmV4YW1wbGUuY29tL3Rva2VuIiwi"
    "aWF0IjoxNTYyMjYyNjE2fQ.2-GxA6T8lP4vfrg8v-FdWP0A0zdrj8igiMLvqRMUvwnQg4PtFLbdLXiOSsX0x7NVY-FNyJK70nfbV37xRZT3Lg")
RFC9449_JKT = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"


def independent_thumbprint(jwk: dict[str, Any], members: tuple[str, ...]) -> str:
    """RFC 7638 §3 by hand: the required members, lexicographic order, no whitespace (json, not orjson)."""
    canonical = json.dumps({m: jwk[m] for m in sorted(members)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def test_rfc7638_rsa_vector() -> None:
    assert thumbprint(RFC7638_RSA) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_okp_and_ec_thumbprints_match_an_independent_computation() -> None:
    for alg, members in (("EdDSA", ("crv", "kty", "x")), ("ES256", ("crv", "kty", "x", "y"))):
        jwk = HolderKey.generate(alg).public_jwk()
        decorated = {**jwk, "kid": "k1", "use": "sig", "alg": alg}  # optional members change nothing
        assert thumbprint(decorated) == thumbprint(jwk) == independent_thumbprint(jwk, members)
    # RFC 8037 §A.3: the published Ed25519 key's thumbprint.
    okp = {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
    assert thumbprint(okp) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_rfc9449_example_proof_and_ath() -> None:
    header = json.loads(base64.urlsafe_b64decode(RFC9449_PROOF.split(".")[0] + "=="))
    assert header["typ"] == "dpop+jwt" and header["alg"] == "ES256" and set(header["jwk"]) == {"kty", "x", "y", "crv"}
    proof = verify_proof(RFC9449_PROOF, method="POST", url="https://server.example.com/token", now=1562262616,
                         leeway_s=0)
    assert proof.jkt == RFC9449_JKT == thumbprint(header["jwk"])
    assert proof.jti == "-BwC3ESc6acc2lTc"
    # RFC 9449 §7.1: the example access token's ath.
    assert access_token_hash("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU") == \
        "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"
    with pytest.raises(DpopRefusal):  # the same proof, presented with an access token it has no ath for
        verify_proof(RFC9449_PROOF, method="POST", url="https://server.example.com/token", now=1562262616,
                     leeway_s=0, access_token="Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU")


@pytest.mark.parametrize(("given", "expected"), [
    ("HTTPS://Server.Example.COM:443/token?x=1#f", "https://server.example.com/token"),
    ("http://gw.test:80", "http://gw.test/"),
    ("http://gw.test:8000/a%2fb", "http://gw.test:8000/a%2Fb"),
    ("http://[::1]:8000/v1", "http://[::1]:8000/v1"),
])
def test_urls_are_normalised(given: str, expected: str) -> None:
    assert normalize_url(given) == expected


@pytest.mark.parametrize("bad", ["ftp://gw.test/x", "/v1/chat", "http://user:pw@gw.test/x", "http://gw.test:99999/"])
def test_non_http_urls_never_match(bad: str) -> None:
    assert normalize_url(bad) is None


def test_the_request_url_comes_from_public_url_when_set() -> None:
    headers = {":authority": "attacker.example", ":scheme": "http"}
    assert request_url(headers, "/v1/chat/completions?x=1", None) == "http://attacker.example/v1/chat/completions"
    assert request_url(headers, "/v1/chat/completions", "https://llm.example.com") == \
        "https://llm.example.com/v1/chat/completions"
    assert request_url({":authority": "a@b"}, "/v1", None) is None


# --- the authorizer ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def signing_key() -> SigningKey:
    return SigningKey.generate("t-1")


def config(signing_key: SigningKey, **gateway: Any) -> DynasealConfig:
    key = {"kid": signing_key.kid, "alg": "EdDSA", "public_jwk": signing_key.public_jwk()}
    return DynasealConfig.model_validate({
        "gateway": {"upstream": {"forward_headers": ["dpop", "x-trace"]}, **gateway},
        "tenants": [{"id": "t", "keys": [key], "limits": {"models": ["m"], "max_tokens": 100}},
                    {"id": "strict", "keys": [key], "limits": {"models": ["m"], "require_dpop": True}}]})


@pytest.fixture(scope="module")
def authorizer(signing_key: SigningKey) -> Authorizer:
    return Authorizer(build_registry(config(signing_key)), quota=None, cache_size=16)


def decide(authorizer: Authorizer, headers: dict[str, str], method: str = "POST",
           path: str = "/v1/chat/completions", authority: str = "gw.test") -> Decision:
    request = AuthRequest(method, path, {":authority": authority, ":scheme": "http", **headers}, BODY)
    return asyncio.run(authorizer.decide(request))


def refused(decision: Decision, code: str = "invalid_dpop_proof") -> str:
    assert (decision.allowed, decision.status, decision.code) == (False, 401, code), decision
    return decision.message


def bound_key(signing_key: SigningKey, holder: HolderKey, tenant: str = "t") -> str:
    return mint(signing_key, tenant=tenant, models=["m"], max_tokens=10, ttl=300, cnf=holder.cnf_jkt())


def test_a_valid_proof_is_allowed_and_the_proof_never_forwarded(authorizer: Authorizer,
                                                                 signing_key: SigningKey) -> None:
    holder = HolderKey.generate()
    key = bound_key(signing_key, holder)
    decision = decide(authorizer, {**holder.headers(key, "POST", URL), "x-trace": "1"})
    assert decision.allowed, decision
    assert "dpop" in decision.headers_to_remove and "x-trace" not in decision.headers_to_remove
    es = HolderKey.generate("ES256")
    assert decide(authorizer, es.headers(bound_key(signing_key, es), "POST", URL)).allowed


def test_a_bound_key_without_a_proof_is_refused_with_a_challenge(authorizer: Authorizer,
                                                                 signing_key: SigningKey) -> None:
    holder = HolderKey.generate()
    key = bound_key(signing_key, holder)
    for headers in ({"authorization": f"DPoP {key}"},
                    {"authorization": f"Bearer {key}", "dpop": holder.proof("POST", URL, key)},  # §7.2
                    {"dynasealtoken": key, "dpop": holder.proof("POST", URL, key)}):
        decision = decide(authorizer, headers)
        refused(decision)
        challenge = decision.headers["www-authenticate"]
        assert challenge.startswith('DPoP error="invalid_dpop_proof"') and 'algs="EdDSA ES256"' in challenge


def test_every_wrong_proof_is_refused(authorizer: Authorizer, signing_key: SigningKey) -> None:
    holder, other = HolderKey.generate(), HolderKey.generate()
    key = bound_key(signing_key, holder)
    auth = {"authorization": f"DPoP {key}"}
    wrong = {
        "method": holder.proof("GET", URL, key),
        "path": holder.proof("POST", "http://gw.test/v1/models", key),
        "origin": holder.proof("POST", "http://other.test/v1/chat/completions", key),
        "another key's ath": holder.proof("POST", URL, bound_key(signing_key, holder)),
        "no ath": holder.proof("POST", URL),
        "another device": other.proof("POST", URL, key),
        "old iat": holder.proof("POST", URL, key, now=time.time() - 200),
        "future iat": holder.proof("POST", URL, key, now=time.time() + 200),
        "two proofs": holder.proof("POST", URL, key) + "," + holder.proof("POST", URL, key),
    }
    for what, proof in wrong.items():
        assert "DPoP" in refused(decide(authorizer, {**auth, "dpop": proof})), what


def forged(holder: HolderKey, key: str, header: dict[str, Any] | None = None, **claims: Any) -> str:
    head = {"typ": "dpop+jwt", "alg": holder.alg, "jwk": holder.public_jwk(), **(header or {})}
    body = {"jti": "j", "htm": "POST", "htu": URL, "iat": int(time.time()), "ath": access_token_hash(key), **claims}
    return raw_token({k: v for k, v in head.items() if v is not None}, body, holder.private_key.sign)


def test_malformed_proofs_are_refused(authorizer: Authorizer, signing_key: SigningKey) -> None:
    holder = HolderKey.generate()
    key = bound_key(signing_key, holder)
    private = {**holder.public_jwk(), "d": b64(b"\x01" * 32)}
    proofs = [forged(holder, key), forged(holder, key, {"typ": "JWT"}), forged(holder, key, {"alg": "ES256"}),
              forged(holder, key, {"alg": "HS256"}), forged(holder, key, {"jwk": None}),
              forged(holder, key, {"jwk": private}), forged(holder, key, jti=None), forged(holder, key, iat="now"),
              forged(holder, key, htu=None), "a.b", "x" * 5000, b64(b"[1]") + "." + b64(b"{}") + ".c"]
    first, *rest = [decide(authorizer, {"authorization": f"DPoP {key}", "dpop": p}) for p in proofs]
    assert first.allowed, first  # the forging itself is sound: only each single change is refused
    for decision in rest:
        refused(decision)


def test_an_unbound_key_keeps_working_as_a_bearer_key(authorizer: Authorizer, signing_key: SigningKey) -> None:
    key = mint(signing_key, tenant="t", models=["m"], max_tokens=10, ttl=300)
    assert decide(authorizer, {"authorization": f"Bearer {key}", "dpop": "ignored"}).allowed
    refused(decide(authorizer, {"authorization": f"DPoP {key}"}), "invalid_api_key")


def test_a_tenant_can_require_bound_keys(authorizer: Authorizer, signing_key: SigningKey) -> None:
    plain = mint(signing_key, tenant="strict", models=["m"], max_tokens=10, ttl=300)
    assert "sender-constrained" in refused(decide(authorizer, {"authorization": f"Bearer {plain}"}))
    holder = HolderKey.generate()
    key = bound_key(signing_key, holder, "strict")
    assert decide(authorizer, holder.headers(key, "POST", URL)).allowed


def test_unusable_cnf_claims_are_refused(authorizer: Authorizer, signing_key: SigningKey) -> None:
    holder = HolderKey.generate()
    cnf: Any
    for cnf in ({"x5t#S256": "abc"}, {"jkt": "short"}, {"jkt": holder.jkt(), "jwk": holder.public_jwk()},
                {"jwk": {**holder.public_jwk(), "d": "AAAA"}}, {"jwk": {"kty": "RSA", "n": "x", "e": "AQAB"}}, []):
        key = mint(signing_key, tenant="t", models=["m"], max_tokens=10, ttl=300, cnf=cnf or None)
        if not cnf:  # an empty cnf is no binding at all; the list form is malformed
            key = raw_token({"alg": "EdDSA", "kid": signing_key.kid}, {
                "iss": "t", "aud": "dynaseal", "exp": int(time.time()) + 60, "cnf": cnf},
                signing_key.private_key.sign)
        assert "cnf" in refused(decide(authorizer, holder.headers(key, "POST", URL)), "invalid_api_key")


def test_public_url_pins_the_origin(signing_key: SigningKey) -> None:
    pinned = Authorizer(build_registry(config(signing_key, public_url="https://llm.example.com/")), quota=None)
    holder = HolderKey.generate()
    key = bound_key(signing_key, holder)
    good = holder.headers(key, "POST", "https://llm.example.com/v1/chat/completions")
    assert decide(pinned, good, authority="anything.test").allowed
    # A proof made for the host the client claims is not enough once the origin is pinned.
    refused(decide(pinned, holder.headers(key, "POST", URL), authority="gw.test"))


def test_the_dpop_header_is_never_forwarded() -> None:
    removed = headers_to_strip({"dpop": "p", "content-type": "x", ":path": "/"}, frozenset({"dpop"}), True)
    assert removed == ("dpop",)


def test_what_a_proof_says_never_breaks_the_challenge_header(authorizer: Authorizer, signing_key: SigningKey) -> None:
    holder = HolderKey.generate()
    key = bound_key(signing_key, holder)
    hostile = forged(holder, key, {"jwk": {"kty": 'é"\r\nx-injected: 1', "crv": "\\" * 500, "x": "AAAA"}})
    decision = decide(authorizer, {"authorization": f"DPoP {key}", "dpop": hostile})
    refused(decision)
    challenge = decision.headers["www-authenticate"]
    assert challenge.isascii() and "\r" not in challenge and "\n" not in challenge and len(challenge) < 300
    assert challenge.count('"') == 6  # error, error_description, algs: each quoted once
