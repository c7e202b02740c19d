"""The seed's way: a key without `kid`, HS256-signed with its tenant's shared secret.

It may carry the seed's own claim names (`api-key`, `model`, `expiring`, ...), mapped onto native
ones, or native claims. Only this mechanism accepts the seed's format: a native key in its clothes
would drop its own limits unseen (dynaseal.keys.claims.check_claims).
"""

from __future__ import annotations

from dynaseal.errors import Refusal
from dynaseal.keys.claims import VerifiedKey, check_claims
from dynaseal.keys.dpop import DpopProof
from dynaseal.keys.identity import JwsToken, Presentation, VerifyContext, check_root_signature, invalid, root_tenant
from dynaseal.keys.tenants import Registry, VerificationKey


def _check_any_seed_secret(token: JwsToken, alg: str, keys: tuple[VerificationKey, ...]) -> None:
    """A seed-format secret being rotated: any of the tenant's kid-less secrets verifies (the first's
    refusal is the one raised when none does)."""
    for other in keys[1:]:
        try:
            check_root_signature(token, alg, other.key, other.alg)
            return
        except Refusal:
            continue
    check_root_signature(token, alg, keys[0].key, keys[0].alg)


class SeedKey:
    """A tenant-signed key with no `kid`: verified with the tenant's seed secret."""

    name = "seed"

    def verify(self, token: JwsToken, ctx: VerifyContext) -> VerifiedKey | None:
        """The key, if the token is kid-less and tenant-signed; Refusal when it does not verify."""
        if token.is_child or token.header.get("kid") is not None:
            return None
        alg, tenant = root_tenant(token, ctx.registry)
        key = tenant.seed_key
        if key is None:
            raise invalid("dynamic key was signed with a key this gateway does not know")
        _check_any_seed_secret(token, alg, tenant.seed_keys or (key,))
        # Derived ids come from the signed content, not the token string: the signature is left out
        # (an ECDSA signature has two valid forms), the segments are canonical, so one key, one id.
        return check_claims(token.payload, tenant, ctx.registry, token.signing_input, ctx.now, seed_key=True)

    def bind(self, key: VerifiedKey, presentation: Presentation, registry: Registry,
             now: float) -> DpopProof | None:
        """Nothing to check per request: a bearer secret (DpopBinding handles a `cnf`)."""
        return None
