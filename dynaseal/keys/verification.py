"""Verify a dynamic key: parse the compact JWS, let the identity mechanisms prove it, cache the result.

The algorithm is never taken from the token: each verification key pins one, and a token
whose header disagrees is refused. That closes `alg: none` and HS/RS (public key as HMAC
secret) confusion by construction. The mechanisms (dynaseal.keys.identity) are tried in
`MECHANISMS` order: a child key (dynaseal.keys.attenuation), the seed's kid-less key
(dynaseal.keys.seed_key), a tenant key by kid (dynaseal.keys.jws_key); the DPoP binding
(dynaseal.keys.dpop_binding) proves no key and is checked per request by `check_bindings`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict

from dynaseal.errors import Refusal
from dynaseal.keys.attenuation import ChainKey
from dynaseal.keys.claims import VerifiedKey
from dynaseal.keys.dpop import DpopProof
from dynaseal.keys.dpop_binding import DpopBinding
from dynaseal.keys.identity import MAX_TOKEN_CHARS, IdentityMechanism, JwsToken, Presentation, VerifyContext, invalid
from dynaseal.keys.jws_key import JwsKey, UnknownKid
from dynaseal.keys.seed_key import SeedKey
from dynaseal.keys.tenants import Registry

log = logging.getLogger("dynaseal.keys")
__all__ = ["MAX_TOKEN_CHARS", "MECHANISMS", "UnknownKid", "VerifiedKeyCache", "check_bindings", "verify_token"]

# Every way a caller proves what it may do, in the order they are asked.
MECHANISMS: tuple[IdentityMechanism, ...] = (ChainKey(), SeedKey(), JwsKey(), DpopBinding())
# The mechanisms that prove a tenant-signed key: where a chain's top is proved.
_ROOTS: tuple[IdentityMechanism, ...] = tuple(m for m in MECHANISMS if not isinstance(m, ChainKey))


def verify_token(token: str, registry: Registry, now: float | None = None) -> VerifiedKey:
    """Verify signature and claims of a dynamic key; raise Refusal otherwise.

    A malformed token is always a 401: whatever types or shapes its header and payload carry, no
    exception other than `Refusal` leaves this function.
    """
    try:
        return _prove(JwsToken.parse(token), MECHANISMS, registry, time.time() if now is None else now)
    except Refusal:
        raise
    except Exception as exc:  # a shape no check anticipated: still the client's malformed key, never a 5xx
        log.debug("malformed dynamic key refused: %s", type(exc).__name__)
        raise invalid("dynamic key is malformed") from None


def _prove(token: JwsToken, mechanisms: tuple[IdentityMechanism, ...], registry: Registry,
           now: float) -> VerifiedKey:
    """The key the first mechanism that recognises the token proves."""
    ctx = VerifyContext(registry, now, lambda root: _prove(root, _ROOTS, registry, now))
    for mechanism in mechanisms:
        key = mechanism.verify(token, ctx)
        if key is not None:
            return key
    raise invalid("dynamic key was signed with a key this gateway does not know")


def check_bindings(key: VerifiedKey, presentation: Presentation, registry: Registry,
                   now: float | None = None) -> DpopProof | None:
    """Every mechanism's per-request check of how the key was presented; the proof to record, if any."""
    at = time.time() if now is None else now
    proofs = [proof for m in MECHANISMS if (proof := m.bind(key, presentation, registry, at)) is not None]
    return proofs[0] if proofs else None


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
