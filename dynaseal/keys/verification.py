"""Verify a dynamic key: parse the compact JWS, pick the tenant's pinned key, check the signature.

The algorithm is never taken from the token: each verification key pins one, and a token
whose header disagrees is refused. That closes `alg: none` and HS/RS (public key as HMAC
secret) confusion by construction.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
import time
from collections import OrderedDict
from typing import Any

from jwt.algorithms import get_default_algorithms

from dynaseal.errors import ErrorCode, Refusal
from dynaseal.jsonsafe import loads_strict
from dynaseal.keys.attenuation import MAX_DEPTH, check_child
from dynaseal.keys.claims import VerifiedKey, check_claims, tenant_id_of
from dynaseal.keys.tenants import Registry, Tenant, VerificationKey
from dynaseal.tenant_config import KID_PATTERN

log = logging.getLogger("dynaseal.keys")
# A child key carries its parent's whole token (`prn`): four levels of children fit in 16 KiB.
MAX_TOKEN_CHARS = 16384
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
    """Decode one JWS segment, accepting only its canonical encoding.

    base64url lets the last character carry unused low bits: `...Q` and `...R` can decode to the
    same bytes. Re-encoding and comparing leaves exactly one spelling per key, so one key has one
    identity (cache entry, fallback jti) and no encoding variant escapes its counters.
    """
    if not _B64URL.match(segment):
        raise _invalid("dynamic key is not valid base64url")
    try:
        decoded = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise _invalid("dynamic key is not valid base64url") from None
    if base64.urlsafe_b64encode(decoded).rstrip(b"=") != segment.encode("ascii"):
        raise _invalid("dynamic key is not canonical base64url")
    return decoded


def _json_object(segment: str, what: str) -> dict[str, Any]:
    try:
        value = loads_strict(_b64decode(segment))
    except Refusal:
        raise
    except (ValueError, RecursionError):
        raise _invalid(f"dynamic key {what} is not a valid JSON object") from None
    if not isinstance(value, dict):
        raise _invalid(f"dynamic key {what} is not a JSON object")
    return value


def verify_token(token: str, registry: Registry, now: float | None = None) -> VerifiedKey:
    """Verify signature and claims of a dynamic key; raise Refusal otherwise.

    A malformed token is always a 401: whatever types or shapes its header and payload carry, no
    exception other than `Refusal` leaves this function.
    """
    try:
        return _verify_token(token, registry, now)
    except Refusal:
        raise
    except Exception as exc:  # a shape no check anticipated: still the client's malformed key, never a 5xx
        log.debug("malformed dynamic key refused: %s", type(exc).__name__)
        raise _invalid("dynamic key is malformed") from None


def _parse(token: str) -> tuple[list[str], dict[str, Any], dict[str, Any]]:
    """The segments, header and payload of a compact JWS (nothing verified yet)."""
    if len(token) > MAX_TOKEN_CHARS:
        raise _invalid("dynamic key is too long")
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise _invalid("dynamic key is not a compact JWS")
    return parts, _json_object(parts[0], "header"), _json_object(parts[1], "payload")


def _verify_token(token: str, registry: Registry, now: float | None) -> VerifiedKey:
    parts, header, payload = _parse(token)
    if "prn" in payload:
        return _verify_chain(parts, header, payload, registry, time.time() if now is None else now)
    return _verify_root(parts, header, payload, registry, now)


def _verify_chain(parts: list[str], header: dict[str, Any], payload: dict[str, Any], registry: Registry,
                  now: float) -> VerifiedKey:
    """A child key: unwrap `prn` down to the tenant's key, verify that, then each child below it in turn."""
    children = [(parts, header, payload)]
    while True:
        parent_token = children[-1][2]["prn"]
        if not isinstance(parent_token, str):
            raise _invalid("child key claim 'prn' must be its parent's compact token")
        if len(children) > MAX_DEPTH:
            raise _invalid(f"child key is nested deeper than {MAX_DEPTH} levels")
        parsed = _parse(parent_token)
        if "prn" not in parsed[2]:
            break
        children.append(parsed)
    # Cheap before any signature: a tenant that allows fewer levels refuses here.
    tenant = registry.get(tenant_id_of(parsed[2]) or "")
    if tenant is not None and len(children) > tenant.limits.max_chain_depth:
        raise _invalid(f"child key is {len(children)} levels below its tenant's key; tenant {tenant.id} allows "
                       f"{tenant.limits.max_chain_depth}")
    key = _verify_root(*parsed, registry, now)
    for child_parts, child_header, child_payload in reversed(children):
        key = check_child(key, child_header, child_payload, f"{child_parts[0]}.{child_parts[1]}".encode("ascii"),
                          _b64decode(child_parts[2]), registry.audience, registry.leeway_s, now)
    return key


def _verify_root(parts: list[str], header: dict[str, Any], payload: dict[str, Any], registry: Registry,
                 now: float | None) -> VerifiedKey:
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in _ALGORITHMS:
        raise _invalid("dynamic key uses an algorithm that is not accepted")
    if "crit" in header or "jku" in header or "x5u" in header or "jwk" in header:
        raise _invalid("dynamic key header carries parameters that are not accepted")

    tenant_id = tenant_id_of(payload)
    tenant = registry.get(tenant_id) if tenant_id is not None else None
    if tenant is None:
        raise _invalid("dynamic key names an unknown tenant")

    verification_key = _verification_key(header.get("kid"), tenant)
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
    # Derived ids come from the signed content, not the token string: the signature is left out
    # (an ECDSA signature has two valid forms), the segments are canonical, so one key, one id.
    return check_claims(payload, tenant, registry, signing_input, time.time() if now is None else now,
                        seed_key=verification_key.kid is None)


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
        # Keyed by the whole token, signature included: a key of the signed content alone would let a
        # forged signature ride on a cached verification.
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


def _verification_key(kid: object, tenant: Tenant) -> VerificationKey:
    """The tenant's key that `kid` names (none: its seed secret); UnknownKid for a kid it may publish later."""
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
    return verification_key
