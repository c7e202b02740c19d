"""Names of every Redis key Dynaseal uses, in one place.

All keys of one dynamic key share the hash tag `{jti}` (tenant-wide ones `{tenant}`), so a
Lua script touching them runs on one slot and works unchanged on Redis Cluster.
"""

from __future__ import annotations

PREFIX = "dynaseal"


def revoked(jti: str) -> str:
    """Marker that a key is revoked (expires with the key)."""
    return f"{PREFIX}:{{{jti}}}:revoked"


def counters(jti: str) -> str:
    """Hash of a key's counters: uses, reserved and spent tokens."""
    return f"{PREFIX}:{{{jti}}}:counters"


def reservations(jti: str) -> str:
    """Hash of open reservations of a key: request_id -> reserved tokens."""
    return f"{PREFIX}:{{{jti}}}:reservations"


def reservation_deadlines(jti: str) -> str:
    """Sorted set of open reservations by expiry time."""
    return f"{PREFIX}:{{{jti}}}:deadlines"


def rate_window(jti: str) -> str:
    """Sorted set of admit times in the last minute (rpm)."""
    return f"{PREFIX}:{{{jti}}}:rpm"


def settled(jti: str) -> str:
    """Set of request ids already settled (idempotent settlement)."""
    return f"{PREFIX}:{{{jti}}}:settled"
