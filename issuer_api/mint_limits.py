"""The issuer's ceilings on what one user may mint: uses per key, and keys per minute.

The mint rate is counted durably, from the minted-keys table the issuer writes anyway: a restart
does not reset it and replicas sharing one database share it. The count and the new key's row are
written in one transaction, serialized per user (a row lock on the user where the database has
them, a process lock for SQLite's single writer), so parallel mints cannot slip past the limit.
"""

from __future__ import annotations

import math
import threading
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from issuer_api.errors import ApiError, IssuerError, invalid_request
from issuer_api.store import MintedKey, User, as_utc

WINDOW = timedelta(minutes=1)
# Held around count + insert: SQLite takes its write lock only at the insert, after the count.
MINT_LOCK = threading.Lock()


def check_uses(uses: int | None, ceiling: int) -> None:
    """Refuse (400) a key asking for more uses than the issuer grants."""
    if uses is not None and uses > ceiling:
        raise invalid_request(f"uses {uses} is above this issuer's maximum of {ceiling} (issuer.key_max_uses)",
                              "uses", IssuerError.USES_ABOVE_LIMIT)


def check_mint_rate(db: Session, user_id: str, per_minute: int, now: datetime) -> None:
    """Refuse (429 with Retry-After) a mint beyond `per_minute` keys of this user in the last minute."""
    db.execute(select(User.id).where(User.id == user_id).with_for_update())
    recent = db.scalars(select(MintedKey.created_at)
                        .where(MintedKey.user_id == user_id, MintedKey.created_at > now - WINDOW)
                        .order_by(MintedKey.created_at.desc()).limit(per_minute)).all()
    if len(recent) < per_minute:
        return
    oldest = as_utc(recent[-1])
    assert oldest is not None
    wait = max(1, math.ceil((oldest + WINDOW - now).total_seconds()))
    raise ApiError(429, IssuerError.MINT_RATE_EXCEEDED,
                   f"at most {per_minute} keys per minute per user (issuer.mint_rate_per_minute); retry in {wait} s",
                   headers={"Retry-After": str(wait)})
