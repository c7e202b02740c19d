"""How a caller proves what it may do: the identity mechanisms, behind one protocol.

Each mechanism lives in its own module and answers two questions, either of which may not be its to
answer (it then returns None):

- `verify(token, ctx)`: which key does this token prove? Depends on the token alone, so its answer is
  cached per token (dynaseal.keys.verification.VerifiedKeyCache). The tenant's seed secret
  (dynaseal.keys.seed_key), a tenant key picked by `kid` (dynaseal.keys.jws_key) and a child narrowed by
  its parent's holder (dynaseal.keys.attenuation) each prove a key.
- `bind(key, presentation, ctx)`: was the key presented the way it must be, on this request? Checked on
  every request, never cached: the DPoP sender constraint (dynaseal.keys.dpop_binding).

`MECHANISMS` in dynaseal.keys.verification is the ordered list the gateway runs; the first to prove a key
wins, and every binding is checked. What all of them read and write is the one claims model
(dynaseal.keys.key_claims) and the one verified key (dynaseal.keys.claims.VerifiedKey).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from jwt.algorithms import get_default_algorithms

from dynaseal.errors import ErrorCode, Refusal
from dynaseal.jsonsafe import loads_strict

if TYPE_CHECKING:
    from dynaseal.keys.claims import VerifiedKey
    from dynaseal.keys.dpop import DpopProof
    from dynaseal.keys.tenants import Registry, Tenant

# A child key carries its parent's whole token (`prn`): four levels of children fit in 16 KiB.
MAX_TOKEN_CHARS = 16384
_B64URL = re.compile(r"^[A-Za-z0-9_-]+$")
# What a tenant-signed key may be signed with; each verification key pins one of them.
ROOT_ALGORITHMS = {name: alg for name, alg in get_default_algorithms().items() if name in ("EdDSA", "ES256", "HS256")}


def invalid(message: str) -> Refusal:
    """401 invalid_api_key with this message."""
    return Refusal(ErrorCode.INVALID_API_KEY, message)


def b64decode(segment: str) -> bytes:
    """Decode one JWS segment, accepting only its canonical encoding.

    base64url lets the last character carry unused low bits: `...Q` and `...R` can decode to the
    same bytes. Re-encoding and comparing leaves exactly one spelling per key, so one key has one
    identity (cache entry, fallback jti) and no encoding variant escapes its counters.
    """
    if not _B64URL.match(segment):
        raise invalid("dynamic key is not valid base64url")
    try:
        decoded = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise invalid("dynamic key is not valid base64url") from None
    if base64.urlsafe_b64encode(decoded).rstrip(b"=") != segment.encode("ascii"):
        raise invalid("dynamic key is not canonical base64url")
    return decoded


def _json_object(segment: str, what: str) -> dict[str, Any]:
    try:
        value = loads_strict(b64decode(segment))
    except Refusal:
        raise
    except (ValueError, RecursionError):
        raise invalid(f"dynamic key {what} is not a valid JSON object") from None
    if not isinstance(value, dict):
        raise invalid(f"dynamic key {what} is not a JSON object")
    return value


@dataclass(frozen=True, slots=True)
class JwsToken:
    """A compact JWS split and its header and payload decoded; nothing verified yet."""

    segments: tuple[str, str, str]
    header: Mapping[str, Any]
    payload: Mapping[str, Any]

    @classmethod
    def parse(cls, token: str) -> JwsToken:
        """Split and decode; Refusal when it is no compact JWS with JSON-object header and payload."""
        if len(token) > MAX_TOKEN_CHARS:
            raise invalid("dynamic key is too long")
        parts = token.split(".")
        if len(parts) != 3 or not all(parts):
            raise invalid("dynamic key is not a compact JWS")
        return cls((parts[0], parts[1], parts[2]), _json_object(parts[0], "header"), _json_object(parts[1], "payload"))

    @property
    def signing_input(self) -> bytes:
        """What the signature covers: the encoded header and payload."""
        return f"{self.segments[0]}.{self.segments[1]}".encode("ascii")

    def signature(self) -> bytes:
        """The decoded signature (decoded late: a refusal about the key comes before one about its bytes)."""
        return b64decode(self.segments[2])

    @property
    def is_child(self) -> bool:
        """Whether the token names a parent (`prn`): a child key, proved by its parent's holder."""
        return "prn" in self.payload


@dataclass(frozen=True, slots=True)
class VerifyContext:
    """What proving a key needs besides the token: the registry, the time, and how to prove a root key
    (a chain proves its top through the other mechanisms)."""

    registry: Registry
    now: float
    verify_root: Callable[[JwsToken], VerifiedKey]


@dataclass(frozen=True, slots=True)
class Presentation:
    """How one request presented its key: the token, its scheme, and what a sender constraint checks."""

    token: str
    via_dpop: bool
    method: str
    path: str
    headers: Mapping[str, str]


class IdentityMechanism(Protocol):
    """One way of proving what a caller may do (see the module docstring)."""

    name: str

    def verify(self, token: JwsToken, ctx: VerifyContext) -> VerifiedKey | None:
        """The key this token proves; None when the token is not this mechanism's kind; Refusal when it is
        and fails."""

    def bind(self, key: VerifiedKey, presentation: Presentation, registry: Registry,
             now: float) -> DpopProof | None:
        """Check how the key was presented on this request; the proof whose replay id Redis must not know
        yet, or None when there is none to record; Refusal when the presentation is not acceptable."""


def root_tenant(token: JwsToken, registry: Registry) -> tuple[str, Tenant]:
    """The checks every tenant-signed key passes first: an accepted `alg`, no header parameter that would
    let the token choose its own key, a known tenant. Returns (alg, tenant)."""
    from dynaseal.keys.claims import tenant_id_of

    alg = token.header.get("alg")
    if not isinstance(alg, str) or alg not in ROOT_ALGORITHMS:
        raise invalid("dynamic key uses an algorithm that is not accepted")
    if "crit" in token.header or "jku" in token.header or "x5u" in token.header or "jwk" in token.header:
        raise invalid("dynamic key header carries parameters that are not accepted")
    tenant_id = tenant_id_of(token.payload)
    tenant = registry.get(tenant_id) if tenant_id is not None else None
    if tenant is None:
        raise invalid("dynamic key names an unknown tenant")
    return alg, tenant


def check_root_signature(token: JwsToken, alg: str, key: Any, pinned_alg: str) -> None:
    """The signature of a tenant-signed key, with the algorithm its verification key pins (never the token's)."""
    if pinned_alg != alg:
        raise invalid("dynamic key algorithm does not match its verification key")
    signature = token.signature()
    try:
        valid = ROOT_ALGORITHMS[alg].verify(token.signing_input, key, signature)
    except Exception:
        valid = False
    if not valid:
        raise invalid("dynamic key signature is invalid")
