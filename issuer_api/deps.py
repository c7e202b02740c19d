"""FastAPI dependencies: the shared state and the account behind a bearer access token."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer

from issuer_api.errors import IssuerError, unauthenticated
from issuer_api.refresh_families import family_revoked
from issuer_api.state import IssuerState
from issuer_api.users import Account, account_by_id

# auto_error=False: a missing token must get our JSON error envelope, not FastAPI's default body.
bearer_scheme = OAuth2PasswordBearer(tokenUrl="user/login", auto_error=False)


async def state_of(request: Request) -> IssuerState:
    """The issuer state of the app serving this request."""
    # async: FastAPI runs a plain `def` dependency on a worker thread, a hop on every request.
    state: IssuerState = request.app.state.issuer
    return state


def bearer_token(request: Request) -> str | None:
    """The bearer credential of the request, if any."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def current_account(
    state: Annotated[IssuerState, Depends(state_of)],
    token: Annotated[str | None, Depends(bearer_scheme)],
) -> Account:
    """The account named by a valid access token; 401 otherwise."""
    if not token:
        raise unauthenticated("missing bearer access token", IssuerError.MISSING_TOKEN)
    claims = state.tokens.claims(token, "access")
    with state.sessions() as db:
        account = account_by_id(db, claims.subject)
        revoked = family_revoked(db, claims.family)
    if account is None:  # deleted since the token was issued
        raise unauthenticated("the account of this token no longer exists")
    if revoked:  # its refresh token was reused: the whole login is withdrawn, this token with it
        raise unauthenticated("this login's session was revoked: log in again", IssuerError.SESSION_REVOKED)
    return account


def client_ip(request: Request) -> str:
    """The client address: the peer, or what a proxy named in `issuer.trusted_proxies` forwarded.

    uvicorn rewrites the peer from X-Forwarded-For only for those proxies (see `server_options`),
    so a forged header from anyone else cannot dodge the login throttle.
    """
    return request.client.host if request.client else "unknown"


StateDep = Annotated[IssuerState, Depends(state_of)]
AccountDep = Annotated[Account, Depends(current_account)]
