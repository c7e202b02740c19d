"""Verify a dynamic key: parse the compact JWS, pick the tenant's pinned key, check the signature.

The algorithm is never taken from the token: each verification key pins one, and a token
whose header disagrees is refused. That closes `alg: none` and HS/RS (public key as HMAC
secret) confusion by construction.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import time
from collections import OrderedDict
from typing import Any

from jwt.algorithms import get_default_algorithms

from dynaseal.claims import VerifiedKey, check_claims, tenant_id_of
from dynaseal.config import KID_PATTERN
from dynaseal.errors import ErrorCode, Refusal
from dynaseal.jsonsafe import loads_strict
from dynaseal.tenants import Registry

MAX_TOKEN_CHARS = 8192
_B64URL = re.compile(r"^[A-Za-z0-9_-]+$")
_ALGORITHMS = {name: alg for name, alg in get_default_algorithms().items()
               if name in ("EdDSA", "ES256", "HS256")}


class UnknownKid(Refusal):
    """A kid the tenant does not (yet) have: the one refusal a JWKS refresh can turn around."""

    def __init__(self, tenant_id: str) -> None:
        super().__init__(ErrorCode.INVALID_API_KEY, "dynamic key was signed with a key this gateway does not know")
        self.tenant_id = tenant_id


def _invalid(message: str) -> Refusal:
    return Refusal(ErrorCode.INVALID_API_KEY, message)


def _b64decode(segment: str) -> bytes:
    if not _B64URL.match(segment):
        raise _invalid("dynamic key is not valid base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise _invalid("dynamic key is not valid base64url") from None


def _json_object(segment: str, what: str) -> dict[str, Any]:
    try:
        value = loads_strict(_b64decode(segment))
    except Refusal:
        raise
    except ValueError:
        raise _invalid(f"dynamic key {what} is not a valid JSON object") from None
    if not isinstance(value, dict):
        raise _invalid(f"dynamic key {what} is not a JSON object")
    return value


def verify_token(token: str, registry: Registry, now: float | None = None) -> VerifiedKey:
    """Verify signature and claims of a dynamic key; raise Refusal otherwise."""
    if len(token) > MAX_TOKEN_CHARS:
        raise _invalid("dynamic key is too long")
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise _invalid("dynamic key is not a compact JWS")
    header = _json_object(parts[0], "header")
    payload = _json_object(parts[1], "payload")

    alg = header.get("alg")
    if alg not in _ALGORITHMS:
        raise _invalid("dynamic key uses an algorithm that is not accepted")
    if "crit" in header or "jku" in header or "x5u" in header or "jwk" in header:
        raise _invalid("dynamic key header carries parameters that are not accepted")

    tenant_id = tenant_id_of(payload)
    tenant = registry.get(tenant_id) if tenant_id is not None else None
    if tenant is None:
        raise _invalid("dynamic key names an unknown tenant")

    kid = header.get("kid")
    if kid is None:
        verification_key = tenant.seed_key
    elif not isinstance(kid, str) or not KID_PATTERN.match(kid):
        raise _invalid("dynamic key has a malformed kid")
    else:
        verification_key = tenant.keys_by_kid.get(kid)
        if verification_key is None:
            raise UnknownKid(tenant.id)
    if verification_key is None:
        raise _invalid("dynamic key was signed with a key this gateway does not know")
    if verification_key.alg != alg:
        raise _invalid("dynamic key algorithm does not match its verification key")

    signature = _b64decode(parts[2])
    signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
    algorithm = _ALGORITHMS[alg]
    try:
        valid = algorithm.verify(signing_input, verification_key.key, signature)
    except Exception:
        valid = False
    if not valid:
        raise _invalid("dynamic key signature is invalid")
    return check_claims(payload, tenant, registry, token, time.time() if now is None else now)


class VerifiedKeyCache:
    """Bounded LRU of verified keys by token hash; an entry is only reused before its `exp`."""

    def __init__(self, registry: Registry, capacity: int) -> None:
        self.registry = registry
        self.capacity = capacity
        self._entries: OrderedDict[bytes, VerifiedKey] = OrderedDict()

    def verify(self, token: str) -> VerifiedKey:
        """Verify through the cache; refusals are never cached (they are cheap to redo)."""
        now = time.time()
        if self.capacity <= 0:
            return verify_token(token, self.registry, now)
        digest = hashlib.sha256(token.encode()).digest()
        hit = self._entries.get(digest)
        if hit is not None:
            if now <= hit.exp + self.registry.leeway_s:
                self._entries.move_to_end(digest)
                return hit
            del self._entries[digest]
        verified = verify_token(token, self.registry, now)
        self._entries[digest] = verified
        if len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        return verified
