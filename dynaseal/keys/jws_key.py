"""A tenant's asymmetric (or kid-named HS256) key, picked by the token's `kid`.

The key comes from the tenant's config (inline `public_jwk`, `jwks_file`) or its published JWKS
(`jwks_url`, dynaseal.keys.remote_jwks); its algorithm is pinned there, never taken from the token.
A `kid` the tenant does not have is `UnknownKid`: the one refusal a JWKS refresh can turn around.
"""

from __future__ import annotations

from dynaseal.errors import ErrorCode, Refusal
from dynaseal.keys.claims import VerifiedKey, check_claims
from dynaseal.keys.dpop import DpopProof
from dynaseal.keys.identity import JwsToken, Presentation, VerifyContext, check_root_signature, invalid, root_tenant
from dynaseal.keys.tenants import Registry
from dynaseal.tenant_config import KID_PATTERN


class UnknownKid(Refusal):
    """A kid the tenant does not (yet) have: the one refusal a JWKS refresh can turn around."""

    def __init__(self, tenant_id: str) -> None:
        super().__init__(ErrorCode.INVALID_API_KEY, "dynamic key was signed with a key this gateway does not know")
        self.tenant_id = tenant_id


class JwsKey:
    """A tenant-signed key with a `kid`: verified with the tenant's key of that kid."""

    name = "jws"

    def verify(self, token: JwsToken, ctx: VerifyContext) -> VerifiedKey | None:
        """The key, if the token names a kid and is tenant-signed; Refusal (UnknownKid) when it does not verify."""
        kid = token.header.get("kid")
        if token.is_child or kid is None:
            return None
        alg, tenant = root_tenant(token, ctx.registry)
        if not isinstance(kid, str) or not KID_PATTERN.match(kid):
            raise invalid("dynamic key has a malformed kid")
        key = tenant.keys_by_kid.get(kid)
        if key is None:
            raise UnknownKid(tenant.id)
        check_root_signature(token, alg, key.key, key.alg)
        return check_claims(token.payload, tenant, ctx.registry, token.signing_input, ctx.now, seed_key=False)

    def bind(self, key: VerifiedKey, presentation: Presentation, registry: Registry,
             now: float) -> DpopProof | None:
        """Nothing to check per request: a bearer key (DpopBinding handles a `cnf`)."""
        return None
