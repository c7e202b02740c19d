"""Browser origins: which web pages may use a tenant's keys (CORS), checked again on every request.

Envoy answers the preflight at the edge for the union of every tenant's allowed origins; the request
itself then reaches authz, which knows the key and so its tenant: the `Origin` a browser sent must be
one of *that* tenant's origins, and one of the key's own `origins` claim when it has one (at every
level of a child key's chain, so a child can never be used from an origin its parent may not).

An allowed origin is written exactly as a browser sends it (`https://app.example.com`,
`http://127.0.0.1:9000`), or as a pattern whose host starts with `*.`: `https://*.example.com` matches
any origin with that scheme (and port) whose host ends in `.example.com` with at least one more DNS
label, never `https://example.com` itself and never another scheme. `null` (sandboxed frames, file://)
and `*` are never allowed: a browser can be made to send `null` from anywhere.

A request without `Origin` is not from a page (or a page on the gateway's own origin, which serves
none): it passes, unless its key names origins, since such a key was minted for pages only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from dynaseal.errors import ErrorCode, Refusal

# scheme://host[:port], lowercase, no path, no userinfo: the serialisation of an origin (RFC 6454 §6.2).
_ORIGIN = re.compile(r"^(https?)://(\*\.)?([a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*"
                     r"|\[[0-9a-f:.]+\])(:[0-9]{1,5})?$")
MAX_ORIGINS = 100
MAX_ORIGIN_CHARS = 255


def check_origin_pattern(value: str) -> str:
    """The pattern itself if it is an exact origin or a `scheme://*.host[:port]` pattern; else ValueError."""
    if not isinstance(value, str) or len(value) > MAX_ORIGIN_CHARS or not _ORIGIN.fullmatch(value):
        raise ValueError(f"{value!r} is not an origin: scheme://host[:port] in lowercase, or "
                         "scheme://*.host[:port] (no path, no trailing slash, never null or *)")
    port = value.rsplit(":", 1)[1] if value.count(":") == 2 and "[" not in value else None
    if port is not None and not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} has no valid port")
    return value


def origin_regex(pattern: str) -> str:
    """An anchored RE2/Python regex matching exactly the origins a pattern allows."""
    if "://*." not in pattern:
        return "^" + re.escape(pattern) + "$"
    scheme, rest = pattern.split("://*.", 1)
    return "^" + re.escape(scheme) + r"://([a-z0-9]([a-z0-9-]*[a-z0-9])?\.)+" + re.escape(rest) + "$"


def origin_matches(origin: str, patterns: Iterable[str]) -> bool:
    """Whether a browser's `Origin` value is allowed by any of the patterns (exact or `*.` pattern)."""
    for pattern in patterns:
        if "://*." in pattern:
            if re.fullmatch(origin_regex(pattern), origin):
                return True
        elif origin == pattern:
            return True
    return False


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
