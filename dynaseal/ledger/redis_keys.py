"""Names of every Redis key Dynaseal uses, in one place.

Every key names its tenant: the keys of one dynamic key share the hash tag `{tenant:jti}`, so
one tenant's key ids can never reach another tenant's counters or revocations, and a Lua script
touching them runs on one slot (it works unchanged on Redis Cluster).

The tag escapes `{`, `}` and `:` inside the tenant id and the jti, so a tenant id such as `a:b`
with jti `c` can never produce the same tag as tenant `a` with jti `b:c`.
"""

from __future__ import annotations

import hashlib

import orjson

PREFIX = "dynaseal:v2"


def _escape(part: str) -> str:
    # `%` first, so the escape itself is unambiguous; braces would end the hash tag early.
    return part.replace("%", "%25").replace(":", "%3A").replace("{", "%7B").replace("}", "%7D")


def key_tag(tenant: str, jti: str) -> str:
    """The hash tag shared by every key of one dynamic key of one tenant."""
    return f"{{{_escape(tenant)}:{_escape(jti)}}}"


def revoked(tenant: str, jti: str) -> str:
    """Marker that a key is revoked (expires with the key)."""
    return f"{PREFIX}:{key_tag(tenant, jti)}:revoked"


def counters(tenant: str, jti: str) -> str:
    """Hash of a key's counters: uses, reserved and spent tokens."""
    return f"{PREFIX}:{key_tag(tenant, jti)}:counters"


def reservations(tenant: str, jti: str) -> str:
    """Hash of open reservations of a key: request_id -> reserved tokens."""
    return f"{PREFIX}:{key_tag(tenant, jti)}:reservations"


def reservation_deadlines(tenant: str, jti: str) -> str:
    """Sorted set of open reservations by expiry time."""
    return f"{PREFIX}:{key_tag(tenant, jti)}:deadlines"


def rate_window(tenant: str, jti: str) -> str:
    """Sorted set of admit times in the last minute (rpm)."""
    return f"{PREFIX}:{key_tag(tenant, jti)}:rpm"


def settled(tenant: str, jti: str) -> str:
    """Hash of request ids already settled (idempotent settlement) or cancelled."""
    return f"{PREFIX}:{key_tag(tenant, jti)}:settled"


# --- sender-constrained keys and key chains --------------------------------------------------------
# A child key's counters live under its ROOT's tag, so one script can charge every level of a family in
# one slot. A level below the root is named by a digest of its jti path from the root (root, ..., itself):
# two branches that pick the same jti never share counters.

def dpop_proofs(tenant: str, root_jti: str) -> str:
    """Sorted set of DPoP proof ids seen for a key family (score: when each may be forgotten, ms)."""
    return f"{PREFIX}:{key_tag(tenant, root_jti)}:dpop"


def node_id(path: tuple[str, ...]) -> str:
    """The id of one level below the root, from its jti path (root first)."""
    return hashlib.sha256(orjson.dumps(list(path))).hexdigest()[:32]


def level_keys(tenant: str, path: tuple[str, ...]) -> list[str]:
    """revoked, counters, reservations, deadlines, rpm, settled of one level (the root's are the plain names)."""
    if len(path) == 1:
        jti = path[0]
        return [revoked(tenant, jti), counters(tenant, jti), reservations(tenant, jti),
                reservation_deadlines(tenant, jti), rate_window(tenant, jti), settled(tenant, jti)]
    base = f"{PREFIX}:{key_tag(tenant, path[0])}:n:{node_id(path)}"
    return [f"{base}:{suffix}" for suffix in ("revoked", "counters", "reservations", "deadlines", "rpm", "settled")]


# --- tenant-wide limits: one hash tag per tenant, `{tenant}` -----------------------------------
# A key tag always holds an unescaped `:` between tenant and jti; a tenant tag never does, so no
# tenant's tag can equal a key's tag. On a cluster the tenant's keys are one slot (one node):
# every admit of every key of a tenant with tenant limits runs a script there.

def tenant_tag(tenant: str) -> str:
    """The hash tag shared by a tenant's tenant-wide counters."""
    return f"{{{_escape(tenant)}}}"


def tenant_budget(tenant: str) -> str:
    """Hash of the tenant's budget per window: `r:<window>` reserved, `s:<window>` spent, `w` current."""
    return f"{PREFIX}:{tenant_tag(tenant)}:tenant:budget"


def tenant_reservations(tenant: str) -> str:
    """Hash of the tenant's open reservations: request_id -> `<window>|<tokens>`."""
    return f"{PREFIX}:{tenant_tag(tenant)}:tenant:reservations"


def tenant_reservation_deadlines(tenant: str) -> str:
    """Sorted set of the tenant's open reservations by expiry time."""
    return f"{PREFIX}:{tenant_tag(tenant)}:tenant:deadlines"


def tenant_provisional(tenant: str) -> str:
    """Hash of expired reservations billed in full, until a late settlement corrects them."""
    return f"{PREFIX}:{tenant_tag(tenant)}:tenant:provisional"


def tenant_rate_window(tenant: str) -> str:
    """Sorted set of the tenant's admit times in the last minute (tenant rpm)."""
    return f"{PREFIX}:{tenant_tag(tenant)}:tenant:rpm"
