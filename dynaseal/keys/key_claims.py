"""The claims of a dynamic key, defined once: what minting writes, what child minting writes, what
verification reads.

`KeyClaims` is the payload as signed (native names, docs/keys.md). `mint` and the issuer sign one,
`HolderKey.child` signs one with `prn`, and verification (dynaseal.keys.claims, dynaseal.keys.attenuation)
accepts exactly the names listed here: `NATIVE_CLAIMS` for a tenant's key, `CHILD_CLAIMS` for a child,
`SEED_CLAIMS` for the seed's format.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyClaims:
    """One key's claims as signed. None leaves a claim out (a child then inherits its parent's)."""

    iss: str
    aud: str | None = None
    iat: int | None = None
    nbf: int | None = None
    exp: int
    jti: str | None = None
    # A child key's parent: its whole compact token.
    prn: str | None = None
    models: Sequence[str] | None = None
    max_tokens: int | None = None
    sub: str | None = None
    budget: int | None = None
    uses: int | None = None
    rpm: int | None = None
    event_id: str | None = None
    params: Mapping[str, Any] | None = None
    cb: Mapping[str, Any] | None = None
    # Holder binding: {"jkt": thumbprint} (DPoP only) or {"jwk": public key} (DPoP, and children).
    cnf: Mapping[str, Any] | None = None
    # Money: {"amount": "<decimal string>", "currency": "<ISO 4217>"}.
    budget_cost: Mapping[str, str] | None = None
    # Web pages the key may be used from.
    origins: Sequence[str] | None = None

    def payload(self) -> dict[str, Any]:
        """The JSON payload to sign: every claim that is set, in this class's order, as plain JSON values."""
        out: dict[str, Any] = {}
        for spec in fields(self):
            value = getattr(self, spec.name)
            if value is None:
                continue
            if isinstance(value, Mapping):
                value = dict(value)
            elif isinstance(value, list | tuple):
                value = list(value)
            out[spec.name] = value
        return out


def money(amount: str, currency: str) -> dict[str, str]:
    """A `budget_cost` claim's value."""
    return {"amount": str(amount), "currency": currency}


NATIVE_CLAIMS = frozenset(spec.name for spec in fields(KeyClaims)) - {"prn"}
# The tenant's key's own: echoed in callbacks or checked against the page, inherited by every child.
ROOT_ONLY_CLAIMS = frozenset({"event_id", "cb", "origins"})
# Every claim a child may carry; verification refuses any other (dynaseal.keys.attenuation).
CHILD_CLAIMS = (NATIVE_CLAIMS - ROOT_ONLY_CLAIMS) | {"prn"}
# The seed's original format (HS256 with the tenant's secret, no kid), mapped onto native claims on read.
SEED_CLAIMS = frozenset({"api-key", "model", "max_tokens", "expiring", "event_id"})
