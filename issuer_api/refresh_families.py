"""Refresh-token rotation with reuse detection (RFC 9700 §4.14.2), stored in the issuer's database.

Each login starts a family. A refresh token is good once: using it marks it used and hands out the
next token of the same family. A token presented a second time means two parties hold it (a thief
and its owner, in either order), and the issuer cannot tell which is which: the whole family is
revoked, its access tokens too (checked on every authenticated call, `family_revoked`), and both
must log in again. Stored in the database, not in memory, so a restart or a second replica can
neither forget a used token nor a revoked family.
"""

from __future__ import annotations

import logging
import secrets
import time
from enum import Enum

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from issuer_api.errors import IssuerError, unauthenticated
from issuer_api.sessions import SessionClaims, SessionTokens
from issuer_api.store import RefreshFamily, RefreshToken, utcnow
from issuer_api.users import Account

log = logging.getLogger("issuer_api.refresh")
REUSED = "refresh_token_reused"


class Rotation(Enum):
    """What presenting a refresh token did."""

    ROTATED = "rotated"
    UNKNOWN = "unknown"  # never handed out by this issuer (or from before families were stored)
    REVOKED = "revoked"  # its family was revoked earlier
    REUSED = "reused"  # already used: the family is revoked now


def _new_token(db: Session, family_id: str, tokens: SessionTokens, now: float) -> str:
    jti = secrets.token_urlsafe(18)
    db.add(RefreshToken(jti=jti, family_id=family_id, exp=tokens.refresh_exp(now)))
    return jti


def start_family(sessions: sessionmaker[Session], tokens: SessionTokens, account: Account) -> dict[str, str]:
    """A login: a new family and its first pair (recorded before the tokens leave the process)."""
    now = time.time()
    family_id = secrets.token_urlsafe(18)
    with sessions.begin() as db:
        db.add(RefreshFamily(id=family_id, user_id=account.id))
        db.flush()  # the family row first: the token row refers to it
        jti = _new_token(db, family_id, tokens, now)
    return tokens.pair(account, family_id, jti, now)


def _rotate(db: Session, claims: SessionClaims, tokens: SessionTokens, now: float) -> tuple[Rotation, str | None]:
    token = db.get(RefreshToken, claims.jti)
    family = db.get(RefreshFamily, claims.family)
    if token is None or family is None or token.family_id != family.id or family.user_id != claims.subject:
        return Rotation.UNKNOWN, None
    if family.revoked_at is not None:
        return Rotation.REVOKED, None
    # One conditional UPDATE: of two concurrent uses of one token exactly one finds it unused.
    used = db.execute(update(RefreshToken).where(RefreshToken.jti == token.jti, RefreshToken.used_at.is_(None))
                      .values(used_at=utcnow()).execution_options(synchronize_session=False))
    if getattr(used, "rowcount", 0) != 1:
        family.revoked_at, family.revoked_reason = utcnow(), REUSED
        return Rotation.REUSED, None
    return Rotation.ROTATED, _new_token(db, family.id, tokens, now)


def rotate(sessions: sessionmaker[Session], tokens: SessionTokens, claims: SessionClaims,
           account: Account) -> dict[str, str]:
    """The next pair of the token's family; a 401 ApiError for an unknown, revoked or reused token."""
    now = time.time()
    with sessions.begin() as db:  # the revocation on reuse is committed before the 401 is answered
        outcome, jti = _rotate(db, claims, tokens, now)
    if outcome is Rotation.ROTATED:
        assert jti is not None
        return tokens.pair(account, claims.family, jti, now)
    if outcome is Rotation.REUSED:
        log.warning("refresh token reused: family revoked", extra={"user": account.username,
                                                                    "family": claims.family})
        raise unauthenticated("this refresh token was already used: every session of this login is revoked, "
                              "log in again", IssuerError.REFRESH_TOKEN_REUSED)
    if outcome is Rotation.REVOKED:
        raise unauthenticated("this login's session was revoked: log in again", IssuerError.SESSION_REVOKED)
    raise unauthenticated("unknown refresh token: log in again")


def family_revoked(db: Session, family_id: str) -> bool:
    """Whether a session family is revoked (or unknown: fail closed)."""
    family = db.get(RefreshFamily, family_id)
    return family is None or family.revoked_at is not None
