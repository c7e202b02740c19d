"""The DPoP sender constraint (RFC 9449 §7) as an identity mechanism: it proves no key, it checks how a
verified key was presented, on every request.

A key with `cnf` must come under the `DPoP` scheme with a valid, fresh proof for this method and URL
(dynaseal.keys.dpop.verify_proof); an unbound key must not; a tenant with `require_dpop` takes no
unbound key at all. The proof returned still has to be new: its replay id is recorded in the admit
script's round trip.
"""

from __future__ import annotations

from dynaseal.errors import ErrorCode, Refusal
from dynaseal.keys.claims import VerifiedKey
from dynaseal.keys.dpop import DpopProof, DpopRefusal, request_url, verify_proof
from dynaseal.keys.identity import JwsToken, Presentation, VerifyContext
from dynaseal.keys.tenants import Registry


class DpopBinding:
    """Checks a key's `cnf` against the request's DPoP proof (identity mechanism: binding only)."""

    name = "dpop"

    def verify(self, token: JwsToken, ctx: VerifyContext) -> VerifiedKey | None:
        """Proves no key: the token is verified by the other mechanisms."""
        return None

    def bind(self, key: VerifiedKey, presentation: Presentation, registry: Registry,
             now: float) -> DpopProof | None:
        """The sender constraint; the proof, whose jti Redis must not know yet (None for an unbound key)."""
        if key.cnf_jkt is None:
            if key.tenant.limits.require_dpop:
                raise DpopRefusal(f"tenant {key.tenant.id} accepts only sender-constrained keys (a cnf claim)")
            if presentation.via_dpop:
                raise Refusal(ErrorCode.INVALID_API_KEY,
                              "this key is not bound to a DPoP key: send it as 'Authorization: Bearer <key>'")
            return None
        if not presentation.via_dpop:  # §7.2: a bound key sent as a bearer token is refused, proof or not
            raise DpopRefusal("this key is sender-constrained: send it as 'Authorization: DPoP <key>' "
                              "with a DPoP proof header")
        return verify_proof(presentation.headers.get("dpop", ""), method=presentation.method,
                            url=request_url(presentation.headers, presentation.path, registry.public_url),
                            now=now, leeway_s=registry.leeway_s, access_token=presentation.token, jkt=key.cnf_jkt)
