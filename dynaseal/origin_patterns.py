"""Browser origin patterns: how an allowed origin is written, checked and matched.

An allowed origin is written exactly as a browser sends it (`https://app.example.com`,
`http://127.0.0.1:9000`), or as a pattern whose host starts with `*.`: `https://*.example.com` matches
any origin with that scheme (and port) whose host ends in `.example.com` with at least one more DNS
label, never `https://example.com` itself and never another scheme. `null` (sandboxed frames, file://)
and `*` are never allowed: a browser can be made to send `null` from anywhere.

The config (a tenant's `cors.origins`), the key's `origins` claim (dynaseal.keys.origins) and Envoy's
CORS policy (dynaseal.envoy) all speak this one language; it imports nothing of the core.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# scheme://host[:port], lowercase, no path, no userinfo: the serialisation of an origin (RFC 6454 §6.2).
_ORIGIN = re.compile(r"^(https?)://(\*\.)?([a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*"
                     r"|\[[0-9a-f:.]+\])(:[0-9]{1,5})?$")
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
