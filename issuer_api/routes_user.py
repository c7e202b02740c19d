"""`POST /user/login` and `POST /user/refresh`: the seed's session endpoints.

Login takes the username or the e-mail address in the OAuth2 form's `username` field (the
original client sends the e-mail).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from issuer_api.deps import StateDep, bearer_token, client_ip
from issuer_api.errors import ApiError, IssuerError, invalid_request, unauthenticated
from issuer_api.refresh_families import rotate, start_family
from issuer_api.state import IssuerState
from issuer_api.users import Account, account_by_id, authenticate, normalize_email

MAX_BODY_BYTES = 16 * 1024
MAX_USERNAME_CHARS = 254  # an e-mail address is allowed here
MAX_PASSWORD_CHARS = 1024

log = logging.getLogger("issuer_api.sessions")
router = APIRouter(tags=["session"])


class TokenPair(BaseModel):
    """The seed's login response."""

    access_token: str
    refresh_token: str
    token_type: str = "bearer"


_CREDENTIALS_SCHEMA = {
    "type": "object",
    "required": ["username", "password"],
    "properties": {"username": {"type": "string"}, "password": {"type": "string", "format": "password"}},
}
_LOGIN_BODY = {"requestBody": {"required": True, "content": {
    "application/x-www-form-urlencoded": {"schema": _CREDENTIALS_SCHEMA},
    "application/json": {"schema": _CREDENTIALS_SCHEMA},
}}}
_REFRESH_BODY = {"requestBody": {"required": False, "content": {"application/json": {"schema": {
    "type": "object", "properties": {"refresh_token": {"type": "string"}}}}}}}


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _body(request: Request) -> bytes:
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise ApiError(413, IssuerError.REQUEST_TOO_LARGE, f"request body above {MAX_BODY_BYTES} bytes")
    return body


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        raise invalid_request("request body is not valid JSON") from None
    if not isinstance(value, dict):
        raise invalid_request("request body must be a JSON object")
    return value


async def _credentials(request: Request) -> tuple[str, str]:
    """Username and password from an OAuth2 password form or a JSON object."""
    raw = await _body(request)
    media_type = _media_type(request)
    if media_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        try:
            fields: Any = await request.form(max_files=0, max_fields=16)
        except Exception:
            raise invalid_request("malformed form body") from None
    elif media_type in ("application/json", ""):
        fields = _json_object(raw)
    else:
        raise invalid_request("send username and password as form fields or as a JSON object")
    username, password = fields.get("username"), fields.get("password")
    if not isinstance(username, str) or not username or len(username) > MAX_USERNAME_CHARS:
        raise invalid_request(f"username is required (a username or e-mail, up to {MAX_USERNAME_CHARS} "
                              "characters)", "username")
    if not isinstance(password, str) or not password or len(password) > MAX_PASSWORD_CHARS:
        raise invalid_request("password is required", "password")
    return username, password


def _check_password(state: IssuerState, username: str, password: str) -> Account | None:
    with state.sessions() as db:
        return authenticate(db, username, password)


def _account(state: IssuerState, user_id: str) -> Account | None:
    with state.sessions() as db:
        return account_by_id(db, user_id)


@router.post("/user/login", response_model=TokenPair, openapi_extra=_LOGIN_BODY,
             summary="Log in with username (or e-mail) and password (form or JSON)")
async def login(request: Request, state: StateDep) -> dict[str, str]:
    """Check the credentials and answer a fresh access/refresh pair; throttle repeated failures."""
    username, password = await _credentials(request)
    if "@" in username:  # one throttle per address however it is capitalised
        username = normalize_email(username)
    ip = client_ip(request)
    wait = state.limiter.retry_after(username, ip)
    if wait:
        log.warning("login throttled", extra={"username": username, "client_ip": ip})
        raise ApiError(429, IssuerError.TOO_MANY_LOGIN_ATTEMPTS, f"too many failed logins; retry in {wait} s",
                       headers={"Retry-After": str(wait)})
    # Counted before the (slow) bcrypt check, so parallel guesses cannot slip past the limit.
    state.limiter.record_failure(username, ip)
    account = await run_in_threadpool(_check_password, state, username, password)
    if account is None:
        log.info("login failed", extra={"username": username, "client_ip": ip})
        raise unauthenticated("incorrect username or password", IssuerError.INVALID_CREDENTIALS)
    state.limiter.reset(username, ip)
    return await run_in_threadpool(start_family, state.sessions, state.tokens, account)


@router.post("/user/refresh", response_model=TokenPair, openapi_extra=_REFRESH_BODY,
             summary="Exchange a refresh token for a new pair")
async def refresh(request: Request, state: StateDep) -> dict[str, str]:
    """A new pair for a valid refresh token, sent as `{"refresh_token": ...}`, a form field, the
    `refresh_token` query parameter (the original backend's form) or bearer. Each refresh token is good
    once; a reused one revokes its login's whole family."""
    raw = await _body(request)
    token: Any = request.query_params.get("refresh_token")
    if token:
        pass  # the original backend's form: `?refresh_token=` (with the access token as bearer)
    elif _media_type(request) == "application/x-www-form-urlencoded":
        token = (await request.form(max_files=0, max_fields=16)).get("refresh_token")
    elif raw.strip():
        token = _json_object(raw).get("refresh_token")
        if token is not None and (not isinstance(token, str) or not token):
            raise invalid_request("refresh_token must be a non-empty string", "refresh_token")
    token = token or bearer_token(request)
    if not token:
        raise unauthenticated("missing refresh token", IssuerError.MISSING_TOKEN)
    claims = state.tokens.claims(token, "refresh")
    account = await run_in_threadpool(_account, state, claims.subject)
    if account is None:
        raise unauthenticated("the account of this token no longer exists")
    # Rotation: this token is spent now; presenting it again revokes its whole family (RFC 9700 §4.14.2).
    return await run_in_threadpool(rotate, state.sessions, state.tokens, claims, account)
