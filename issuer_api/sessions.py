"""Session tokens for the issuer's own users: HS256 JWTs, an access/refresh pair per login.

These only authenticate calls to the issuer API; they are not dynamic keys and the gateway
never accepts them (different issuer, no audience, a secret the gateway does not hold).
Both tokens of a pair name their login's family (`fam`, issuer_api.refresh_families): a refresh
token is good once, and reusing one revokes the family, its access tokens included.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Literal

import jwt
from pydantic import SecretStr

from issuer_api.errors import IssuerError, unauthenticated
from issuer_api.users import Account

ALGORITHM = "HS256"
ISSUER = "dynaseal-issuer"
MIN_SECRET_BYTES = 32

TokenType = Literal["access", "refresh"]


@dataclass(frozen=True, slots=True)
class SessionClaims:
    """What a valid session token says: its user, its own id and its login's family."""

    subject: str
    jti: str
    family: str
    exp: int


@dataclass(frozen=True, slots=True)
class SessionTokens:
    """Minting and checking session tokens with one secret and the configured lifetimes."""

    # A SecretStr: the dataclass repr (a traceback, a debug log) shows '**********', never the value.
    secret: SecretStr
    access_minutes: int
    refresh_minutes: int

    def _encode(self, account: Account, typ: TokenType, minutes: int, now: float, family: str,
                jti: str | None = None) -> str:
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "sub": account.id,
            "name": account.username,
            "typ": typ,
            "iat": int(now),
            "exp": int(now) + minutes * 60,
            # Unique per token, so two logins in the same second never yield the same pair.
            "jti": jti or secrets.token_urlsafe(12),
            "fam": family,
        }
        return jwt.encode(claims, self.secret.get_secret_value(), algorithm=ALGORITHM)

    def pair(self, account: Account, family: str, refresh_jti: str, now: float) -> dict[str, str]:
        """A fresh access + refresh token pair of `family` in the seed's response shape; the refresh
        token's id is `refresh_jti` (recorded by the caller, so it can be used once)."""
        return {
            "access_token": self._encode(account, "access", self.access_minutes, now, family),
            "refresh_token": self._encode(account, "refresh", self.refresh_minutes, now, family, refresh_jti),
            "token_type": "bearer",
        }

    def refresh_exp(self, now: float) -> int:
        """When a refresh token issued at `now` expires."""
        return int(now) + self.refresh_minutes * 60

    def claims(self, token: str, expected: TokenType) -> SessionClaims:
        """The claims of a valid token of the expected type; raise a 401 ApiError otherwise."""
        claims = self._decoded(token, expected)
        subject, jti, family = claims["sub"], claims.get("jti"), claims.get("fam")
        if not isinstance(jti, str) or not jti or not isinstance(family, str) or not family:
            # Fail closed: a token without a family cannot be rotated or revoked (log in again).
            raise unauthenticated(f"invalid {expected} token: log in again")
        return SessionClaims(subject, jti, family, int(claims["exp"]))

    def subject(self, token: str, expected: TokenType) -> str:
        """The user id a valid token of the expected type names; raise a 401 ApiError otherwise."""
        return str(self._decoded(token, expected)["sub"])

    def _decoded(self, token: str, expected: TokenType) -> dict[str, Any]:
        try:
            claims = jwt.decode(token, self.secret.get_secret_value(), algorithms=[ALGORITHM], issuer=ISSUER,
                                options={"require": ["exp", "iat", "sub", "typ", "iss"]})
        except jwt.ExpiredSignatureError:
            raise unauthenticated(f"{expected} token has expired", IssuerError.TOKEN_EXPIRED) from None
        except jwt.PyJWTError:
            raise unauthenticated(f"invalid {expected} token") from None
        if claims.get("typ") != expected:
            raise unauthenticated(f"a {claims.get('typ')!s} token cannot be used as {expected} token",
                                  IssuerError.WRONG_TOKEN_TYPE)
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise unauthenticated(f"invalid {expected} token")
        return claims
