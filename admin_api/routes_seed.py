"""The seed's registration of a business backend, on the gateway's port (`/api/v1`, as the seed's LLM server).

`POST /api/v1/user/login` (OAuth2 password form, the account's e-mail as username) and
`POST /api/v1/api_key/create` (bearer), answered in the seed's shapes: the new signing secret verifies
the tenant's seed-format keys from the next config generation on (about a second), beside every
earlier one. `GET /api/v1/user/me` shows the account and its `total_tokens`.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
import uuid
from typing import Annotated, Any

import bcrypt
import jwt
from fastapi import APIRouter, Depends, Form, HTTPException, Request
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool

from admin_api.state import AdminState, admin_state
from admin_api.throttle import Throttle
from admin_api.usage_totals import RecentTotals
from dynaseal.redaction import remember_secrets
from dynaseal.tenancy.store import PURPOSE_SEED, AccountRow

router = APIRouter(prefix="/api/v1", tags=["seed registration"])
State = Annotated[AdminState, Depends(admin_state)]
SESSION_MINUTES = 30
MAX_PASSWORD_BYTES = 72
MAX_LOGIN_CHARS = 254  # an e-mail address at most
# Compared against when the e-mail is unknown, so a miss costs what a hit costs.
_DUMMY_HASH = b"$2b$12$D9Zw3l84onPNf.UF739FeuQkstgmNo5HHlGCrkaZQp.fFo64OHwB2"
_BCRYPT_SLOT = threading.BoundedSemaphore(1)
BCRYPT_WAIT_S = 10.0
# A reading scans the gateway's Redis (authz's hot path) for the tenant's keys: one scan at a time, reused for
# a second, however often a backend asks.
_TOTALS = RecentTotals()
_UNAUTHORIZED = HTTPException(401, "Could not validate credentials", headers={"WWW-Authenticate": "Bearer"})


def _session_key(request: Request) -> bytes:
    # Derived from the admin token: every admin replica accepts the sessions of the others.
    token: str = request.app.state.admin_token.get_secret_value()
    return hmac.new(token.encode(), b"dynaseal backend sessions v1", hashlib.sha256).digest()


def _matches(password: str, stored: str | None) -> bool:
    raw = password.encode()
    if len(raw) > MAX_PASSWORD_BYTES:
        return False
    # Anyone on the gateway's port can ask for a bcrypt (made-up names cost one too): one at a time, so
    # logins never take more than a core from the services beside this one.
    if not _BCRYPT_SLOT.acquire(timeout=BCRYPT_WAIT_S):
        raise HTTPException(503, "Too many logins at once", headers={"Retry-After": "1"})
    try:
        return bcrypt.checkpw(raw, (stored or "").encode() or _DUMMY_HASH) and stored is not None
    finally:
        _BCRYPT_SLOT.release()


def _token(request: Request, account: AccountRow, typ: str, minutes: int) -> str:
    now = int(time.time())
    claims = {"sub": account.email, "tenant": account.tenant_id, "typ": typ, "iat": now, "exp": now + minutes * 60}
    return jwt.encode(claims, _session_key(request), algorithm="HS256")


def current_account(request: Request, state: State) -> AccountRow:
    """The account of the bearer session token; 401 otherwise."""
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise _UNAUTHORIZED
    try:
        claims = jwt.decode(token.strip(), _session_key(request), algorithms=["HS256"],
                            options={"require": ["exp", "sub"]})
    except jwt.PyJWTError:
        raise _UNAUTHORIZED from None
    if claims.get("typ") != "access":
        raise _UNAUTHORIZED
    account = state.store().account(str(claims["sub"]))
    if account is None:
        raise _UNAUTHORIZED
    return account


Account = Annotated[AccountRow, Depends(current_account)]


@router.post("/user/login")
def login(request: Request, state: State, username: Annotated[str, Form()],
          password: Annotated[str, Form()]) -> dict[str, str]:
    """The seed's OAuth2 password form (e-mail or username; grant_type, scope, client_* accepted and unused)."""
    login_name = username.strip()
    if len(login_name) > MAX_LOGIN_CHARS:
        # No account has such a name (the store's columns are shorter): no bcrypt, no entry in the throttle.
        raise HTTPException(401, "Incorrect username or password", headers={"WWW-Authenticate": "Bearer"})
    throttle: Throttle = request.app.state.login_throttle
    account = state.store().account(login_name)
    # Counted per account, whichever name (e-mail or username) it is reached by; an unknown name on its own.
    attempts_key = f"account:{account.email}" if account is not None else f"name:{login_name}"
    if (wait := throttle.retry_after(attempts_key)) > 0:
        raise HTTPException(429, "Too many failed logins", headers={"Retry-After": str(int(wait) + 1)})
    if not _matches(password, account.password_hash if account else None) or account is None:
        throttle.count(attempts_key, kept=account is not None)
        raise HTTPException(401, "Incorrect username or password", headers={"WWW-Authenticate": "Bearer"})
    return {"access_token": _token(request, account, "access", SESSION_MINUTES),
            "refresh_token": _token(request, account, "refresh", 60 * 24 * 7), "token_type": "bearer"}


@router.post("/api_key/create")
def create_api_key(request: Request, account: Account, state: State) -> dict[str, Any]:
    """A new signing secret for the account's tenant, in the seed's `APIKey` shape; earlier ones stay valid."""
    creations: Throttle = request.app.state.create_throttle
    if (wait := creations.retry_after(account.email)) > 0:
        raise HTTPException(429, "Too many keys created", headers={"Retry-After": str(int(wait) + 1)})
    creations.count(account.email)
    tenancy = state.current()
    if account.tenant_id not in {t.id for t in tenancy.cfg.tenants}:
        raise HTTPException(400, "User not found")
    if account.tenant_id in tenancy.disabled:
        # A disabled tenant's keys are refused; a new secret would verify them again the moment it is enabled.
        raise HTTPException(403, "the account's tenant is disabled")
    api_key = str(uuid.uuid4())
    remember_secrets([api_key])
    state.store().put_tenant(account.tenant_id, None, {PURPOSE_SEED: api_key})
    return {"_id": None, "revision_id": None, "api_key": api_key, "last_used": 0}


@router.get("/user/me")
async def me(account: Account, state: State) -> dict[str, Any]:
    """The account in the seed's `User` shape (no password, no keys), with the tokens its tenant spent."""
    redis_url = await run_in_threadpool(state.redis_url)  # it reads the config file
    try:
        total = await _TOTALS.read(redis_url, account.tenant_id)
    except RedisError:
        raise HTTPException(503, "usage is unavailable: the ledger cannot be reached") from None
    return {"_id": account.tenant_id, "username": account.username, "email": account.email, "total_tokens": total}
