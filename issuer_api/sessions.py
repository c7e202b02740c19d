"""Session tokens for the issuer's own users: HS256 JWTs, an access/refresh pair per login.

These only authenticate calls to the issuer API; they are not dynamic keys and the gateway
never accepts them (different issuer, no audience, a secret the gateway does not hold).
"""

from __future__ import annotations

import secrets
import time
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
class SessionTokens:
    """Minting and checking session tokens with one secret and the configured lifetimes."""

    # A SecretStr: the dataclass repr (a traceback, a debug log) shows '**********', never the value.
    secret: SecretStr
    access_minutes: int
    refresh_minutes: int

    def _encode(self, account: Account, typ: TokenType, minutes: int, now: float) -> str:
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "sub": account.id,
            "name": account.username,
            "typ": typ,
            "iat": int(now),
            "exp": int(now) + minutes * 60,
            # Unique per token, so two logins in the same second never yield the same pair.
            "jti": secrets.token_urlsafe(12),
        }
        return jwt.encode(claims, self.secret.get_secret_value(), algorithm=ALGORITHM)

    def pair(self, account: Account, now: float | None = None) -> dict[str, str]:
        """A fresh access + refresh token pair in the seed's response shape."""
        issued = time.time() if now is None else now
        return {
            "access_token": self._encode(account, "access", self.access_minutes, issued),
            "refresh_token": self._encode(account, "refresh", self.refresh_minutes, issued),
            "token_type": "bearer",
        }

    def subject(self, token: str, expected: TokenType) -> str:
        """The user id a valid token of the expected type names; raise a 401 ApiError otherwise."""
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
        return subject
