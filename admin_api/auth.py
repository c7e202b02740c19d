"""Operator authentication: one bearer token, compared in constant time, never logged."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request
from pydantic import SecretStr


def admin_token(request: Request) -> SecretStr:
    """The token this admin API accepts (set on the app's state when the app is built)."""
    token: SecretStr = request.app.state.admin_token
    return token


def require_admin(token: Annotated[SecretStr, Depends(admin_token)],
                  authorization: Annotated[str | None, Header()] = None) -> None:
    """Refuse (401) a request without `Authorization: Bearer <admin token>`."""
    scheme, _, presented = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(),
                                                             token.get_secret_value().encode()):
        raise HTTPException(401, "admin token required", headers={"WWW-Authenticate": "Bearer"})


AdminOnly = Depends(require_admin)
