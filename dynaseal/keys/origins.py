"""Browser origins: which web pages may use a tenant's keys (CORS), checked again on every request.

Envoy answers the preflight at the edge for the union of every tenant's allowed origins; the request
itself then reaches authz, which knows the key and so its tenant: the `Origin` a browser sent must be
one of *that* tenant's origins, and one of the key's own `origins` claim when it has one (at every
level of a child key's chain, so a child can never be used from an origin its parent may not).

Allowed origins are written in the pattern language of `dynaseal.origin_patterns` (exact origins or
`scheme://*.host[:port]`; never `null` or `*`).

A request without `Origin` is not from a page (or a page on the gateway's own origin, which serves
none): it passes, unless its key names origins, since such a key was minted for pages only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from dynaseal.errors import ErrorCode, Refusal
from dynaseal.origin_patterns import check_origin_pattern, origin_matches

MAX_ORIGINS = 100


def parse_origins_claim(value: object) -> frozenset[str] | None:
    """The key's `origins` claim (a non-empty list of origin patterns); ValueError if malformed."""
    if value is None:
        return None
    if not isinstance(value, list) or not value or len(value) > MAX_ORIGINS:
        raise ValueError(f"must be a list of 1 to {MAX_ORIGINS} origins")
    return frozenset(check_origin_pattern(item) for item in value)


def check_origin(headers: Mapping[str, str], tenant_id: str, tenant_origins: Iterable[str],
                 key_origins: Iterable[frozenset[str] | None]) -> None:
    """Refuse (403 `origin_not_allowed`) a request from a page its tenant or its key does not allow.

    `key_origins` holds the `origins` claim of every level of the key's chain (None: no claim).
    """
    origin = headers.get("origin")
    claims = [level for level in key_origins if level is not None]
    if origin is None:
        if claims:
            raise Refusal(ErrorCode.ORIGIN_NOT_ALLOWED,
                          "this key may only be used from the web origins it names (send Origin)")
        return
    shown = origin[:80].encode("ascii", "replace").decode()
    if not origin_matches(origin, tenant_origins):
        raise Refusal(ErrorCode.ORIGIN_NOT_ALLOWED, f"origin {shown!r} may not call the gateway for tenant "
                                                    f"{tenant_id} (add it to the tenant's cors.origins)")
    for allowed in claims:
        if not origin_matches(origin, allowed):
            raise Refusal(ErrorCode.ORIGIN_NOT_ALLOWED, f"origin {shown!r} is not one of this key's origins")
