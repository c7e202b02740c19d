"""Minting dynamic keys: the helper a tenant's backend calls, online or offline.

    from dynaseal.keys.mint import SigningKey, mint
    signing_key = SigningKey.generate()          # keep signing_key.private_jwk() secret
    token = mint(signing_key, tenant="acme", models=["gpt-4o-mini"], max_tokens=256, ttl=600)

Publish `signing_key.public_jwk()` in the gateway config (or a JWKS) under the tenant. Every key is
written from the one claims model, `dynaseal.keys.key_claims.KeyClaims`, that verification reads.

A device or agent holds a `HolderKey` of its own: a key bound to it (`cnf`) is sent with a fresh
DPoP proof per request (`holder.headers(...)`, or `DpopAuth` for an httpx/openai client), and a key
naming it as holder (`cnf.jwk`) can be narrowed offline into child keys (`holder.child(...)`).
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, EllipticCurvePrivateKey, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

from dynaseal.keys.attenuation import CHILD_TYP
from dynaseal.keys.dpop import access_token_hash, thumbprint
from dynaseal.keys.key_claims import KeyClaims, money


@dataclass(frozen=True, slots=True)
class SigningKey:
    """An Ed25519 private key with its kid; `repr` never shows the key."""

    kid: str
    private_key: Ed25519PrivateKey = field(repr=False)
    created_at: float = 0.0
    alg: str = "EdDSA"

    @classmethod
    def generate(cls, kid: str | None = None) -> SigningKey:
        """A fresh Ed25519 key with a random (or given) kid."""
        return cls(kid or f"ed-{secrets.token_hex(6)}", Ed25519PrivateKey.generate(), time.time())

    @classmethod
    def from_private_jwk(cls, jwk_dict: Mapping[str, Any], created_at: float = 0.0) -> SigningKey:
        """Load from a private OKP JWK (as written by `private_jwk`)."""
        key = OKPAlgorithm.from_jwk(dict(jwk_dict))
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("signing JWK must be a private Ed25519 key")
        return cls(str(jwk_dict["kid"]), key, created_at)

    def public_jwk(self) -> dict[str, Any]:
        """The public half as a JWK with kid, alg and use."""
        jwk_dict = json.loads(OKPAlgorithm.to_jwk(self.private_key.public_key()))
        return {**jwk_dict, "kid": self.kid, "alg": "EdDSA", "use": "sig"}

    def private_jwk(self) -> dict[str, Any]:
        """The private key as a JWK, for the key store file only."""
        return {**json.loads(OKPAlgorithm.to_jwk(self.private_key)), "kid": self.kid, "alg": "EdDSA"}


def mint(
    signing_key: SigningKey,
    *,
    tenant: str,
    models: Sequence[str],
    max_tokens: int,
    ttl: int,
    audience: str = "dynaseal",
    sub: str | None = None,
    budget: int | None = None,
    uses: int | None = None,
    rpm: int | None = None,
    params: Mapping[str, Any] | None = None,
    cb: Mapping[str, Any] | None = None,
    event_id: str | None = None,
    jti: str | None = None,
    now: float | None = None,
    cnf: Mapping[str, Any] | None = None,
    budget_cost: str | None = None,
    currency: str = "USD",
) -> str:
    """Sign a native-format dynamic key (EdDSA) for `tenant`.

    `cnf` binds it to a holder's key: `holder.cnf_jkt()` (DPoP only) or `holder.cnf_jwk()` (DPoP, and
    the holder may mint narrowed children). `budget_cost` is a decimal string in `currency`.
    """
    issued = int(time.time() if now is None else now)
    claims = KeyClaims(
        iss=tenant, aud=audience, iat=issued, nbf=issued, exp=issued + ttl, jti=jti or secrets.token_urlsafe(16),
        models=list(models), max_tokens=max_tokens, sub=sub, budget=budget, uses=uses, rpm=rpm, event_id=event_id,
        params=params or None, cb=cb or None, cnf=cnf or None,
        budget_cost=money(budget_cost, currency) if budget_cost is not None else None)
    return sign_claims(signing_key, claims)


def sign_claims(signing_key: SigningKey, claims: KeyClaims) -> str:
    """Sign any native claims (the one claims model, dynaseal.keys.key_claims) with a tenant's key."""
    return jwt.encode(claims.payload(), signing_key.private_key, algorithm="EdDSA",
                      headers={"kid": signing_key.kid, "typ": "JWT"})


def mint_seed_key(tenant_id: str, secret: str, *, model: str, max_tokens: int, ttl: int,
                  event_id: str | int, now: float | None = None) -> str:
    """Sign a key in the seed's original format (HS256 with the tenant's shared secret, no kid)."""
    issued = int(time.time() if now is None else now)
    payload = {"api-key": tenant_id, "model": model, "max_tokens": max_tokens,
               "expiring": issued + ttl, "event_id": event_id}
    return jwt.encode(payload, secret, algorithm="HS256")


def _unverified_claims(token: str) -> dict[str, Any]:
    part = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))


def _without_query(url: str) -> str:
    return url.split("#", 1)[0].split("?", 1)[0]


@dataclass(frozen=True, slots=True)
class HolderKey:
    """A device's or agent's own key pair (Ed25519 or P-256): proves possession and signs child keys."""

    private_key: Ed25519PrivateKey | EllipticCurvePrivateKey = field(repr=False)

    @classmethod
    def generate(cls, alg: str = "EdDSA") -> HolderKey:
        """A fresh key: `EdDSA` (Ed25519) or `ES256` (P-256)."""
        if alg == "ES256":
            return cls(generate_private_key(SECP256R1()))
        if alg != "EdDSA":
            raise ValueError("a holder key is EdDSA or ES256")
        return cls(Ed25519PrivateKey.generate())

    @property
    def alg(self) -> str:
        """The JWS algorithm this key signs with."""
        return "EdDSA" if isinstance(self.private_key, Ed25519PrivateKey) else "ES256"

    def public_jwk(self) -> dict[str, Any]:
        """The public half as a JWK (kty, crv, x[, y]): what goes in a proof header or `cnf.jwk`."""
        public = self.private_key.public_key()
        if isinstance(public, Ed25519PublicKey):
            return dict(json.loads(OKPAlgorithm.to_jwk(public)))
        return dict(json.loads(ECAlgorithm.to_jwk(public)))

    def jkt(self) -> str:
        """The RFC 7638 thumbprint of the public key (what `cnf.jkt` holds)."""
        return thumbprint(self.public_jwk())

    def cnf_jkt(self) -> dict[str, Any]:
        """A `cnf` claim that binds a key to this holder (DPoP proofs required)."""
        return {"jkt": self.jkt()}

    def cnf_jwk(self) -> dict[str, Any]:
        """A `cnf` claim that binds a key to this holder and lets the holder mint narrowed children."""
        return {"jwk": self.public_jwk()}

    def proof(self, method: str, url: str, access_token: str | None = None, *, now: float | None = None,
              jti: str | None = None) -> str:
        """A DPoP proof (RFC 9449 §4.2) for one request; a new one for every request."""
        claims: dict[str, Any] = {"jti": jti or secrets.token_urlsafe(16), "htm": method.upper(),
                                  "htu": _without_query(url), "iat": int(time.time() if now is None else now)}
        if access_token is not None:
            claims["ath"] = access_token_hash(access_token)
        return jwt.encode(claims, self.private_key, algorithm=self.alg,
                          headers={"typ": "dpop+jwt", "jwk": self.public_jwk()})

    def headers(self, token: str, method: str, url: str) -> dict[str, str]:
        """`Authorization: DPoP <key>` and a fresh `DPoP` proof for one request with a bound key."""
        return {"authorization": f"DPoP {token}", "dpop": self.proof(method, url, token)}

    def child(self, parent: str, *, ttl: int | None = None, models: Sequence[str] | None = None,
              max_tokens: int | None = None, budget: int | None = None, uses: int | None = None,
              rpm: int | None = None, params: Mapping[str, Any] | None = None,
              cnf: Mapping[str, Any] | None = None, jti: str | None = None, now: float | None = None) -> str:
        """Sign, offline, a child of `parent` (a key whose `cnf.jwk` is this key) that can do at most what
        `parent` can: each limit given must be within the parent's, the rest is inherited. It expires with
        the parent, or `ttl` seconds from now if sooner. `cnf` binds the child to its own holder."""
        claims = _unverified_claims(parent)
        issued = int(time.time() if now is None else now)
        exp = int(claims["exp"]) if ttl is None else min(int(claims["exp"]), issued + ttl)
        child = KeyClaims(iss=claims["iss"], aud=claims.get("aud"), iat=issued, nbf=issued, exp=exp,
                          jti=jti or secrets.token_urlsafe(16), prn=parent,
                          models=list(models) if models is not None else None, max_tokens=max_tokens,
                          budget=budget, uses=uses, rpm=rpm, params=params or None, cnf=cnf or None)
        return jwt.encode(child.payload(), self.private_key, algorithm=self.alg, headers={"typ": CHILD_TYP})


class DpopAuth(httpx.Auth):
    """httpx auth that sends a bound key with a fresh proof on every request:
    `openai.OpenAI(api_key="unused", http_client=httpx.Client(auth=DpopAuth(holder, key)))`."""

    def __init__(self, holder: HolderKey, token: str) -> None:
        self.holder = holder
        self.token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Set `Authorization: DPoP` and `DPoP` for this request's method and URL."""
        request.headers.update(self.holder.headers(self.token, request.method, str(request.url)))
        yield request
