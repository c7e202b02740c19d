"""Minting dynamic keys: the helper a tenant's backend calls, online or offline.

    from dynaseal.keys import SigningKey, mint
    signing_key = SigningKey.generate()          # keep signing_key.private_jwk() secret
    token = mint(signing_key, tenant="acme", models=["gpt-4o-mini"], max_tokens=256, ttl=600)

Publish `signing_key.public_jwk()` in the gateway config (or a JWKS) under the tenant.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwt.algorithms import OKPAlgorithm


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
    budget_cost: str | None = None,
    currency: str = "USD",
) -> str:
    """Sign a native-format dynamic key (EdDSA) for `tenant`; `budget_cost` is a decimal string in `currency`."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "iss": tenant,
        "aud": audience,
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl,
        "jti": jti or secrets.token_urlsafe(16),
        "models": list(models),
        "max_tokens": max_tokens,
    }
    optional = {"sub": sub, "budget": budget, "uses": uses, "rpm": rpm, "event_id": event_id,
                "params": dict(params) if params else None, "cb": dict(cb) if cb else None}
    claims.update({k: v for k, v in optional.items() if v is not None})
    if budget_cost is not None:
        claims["budget_cost"] = {"amount": str(budget_cost), "currency": currency}
    return jwt.encode(claims, signing_key.private_key, algorithm="EdDSA",
                      headers={"kid": signing_key.kid, "typ": "JWT"})


def mint_seed_key(tenant_id: str, secret: str, *, model: str, max_tokens: int, ttl: int,
                  event_id: str | int, now: float | None = None) -> str:
    """Sign a key in the seed's original format (HS256 with the tenant's shared secret, no kid)."""
    issued = int(time.time() if now is None else now)
    payload = {"api-key": tenant_id, "model": model, "max_tokens": max_tokens,
               "expiring": issued + ttl, "event_id": event_id}
    return jwt.encode(payload, secret, algorithm="HS256")
