"""`POST /key/create`, `POST /key/revoke` and the public JWKS: minting and withdrawing dynamic keys."""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import replace
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from dynaseal.keys.mint import mint
from issuer_api.deps import AccountDep, StateDep
from issuer_api.dpop_binding import requested_binding
from issuer_api.errors import ApiError, IssuerError
from issuer_api.gateway_notice import notify_revoked
from issuer_api.mint_limits import MINT_LOCK, check_mint_rate, check_uses
from issuer_api.scope import ScopeRequest, resolve_scope
from issuer_api.state import IssuerState
from issuer_api.store import MintedKey, User, as_utc, utcnow
from issuer_api.users import Account

log = logging.getLogger("issuer_api.keys")
router = APIRouter(tags=["keys"])


class KeyCreated(BaseModel):
    """A freshly minted dynamic key; `token` goes in the client's `dynasealtoken`/bearer header."""

    token: str
    jti: str
    kid: str
    expires_at: int
    scope: dict[str, Any]


class RevokeRequest(BaseModel):
    """Which key to revoke."""

    model_config = ConfigDict(extra="forbid")

    jti: str = Field(min_length=1, max_length=128)


class KeyRevoked(BaseModel):
    """The outcome of a revocation."""

    jti: str
    revoked: bool
    revoked_at: datetime
    already_revoked: bool
    gateway_notified: bool


@router.post("/key/create", response_model=KeyCreated, summary="Mint a dynamic key (optionally narrowed)")
def create_key(state: StateDep, account: AccountDep, request: Request,
               scope_request: Annotated[ScopeRequest | None, Body()] = None) -> dict[str, Any]:
    """Sign a key within the issuer defaults and tenant ceilings and record it (never the token).

    With `dpop_jkt`, `holder_jwk` or a `DPoP` proof header the key is bound to the client's key (`cnf`).
    """
    scope = resolve_scope(scope_request, account, state.issuer, state.limits)
    cnf = requested_binding(request, scope_request, state.cfg.gateway.leeway_s, state.limits.require_dpop)
    scope = replace(scope, cnf=cnf)
    check_uses(scope.uses, state.issuer.key_max_uses)
    signing_key = state.keystore.active()  # read per request, so a rotation applies without restart
    jti, now = secrets.token_urlsafe(16), int(time.time())
    record = scope.as_record()
    # Counted and recorded in one transaction, before the token is returned: a key over the user's mint
    # rate, or whose record failed, never leaves the process.
    with MINT_LOCK, state.sessions.begin() as db:
        created = utcnow()
        check_mint_rate(db, account.id, state.issuer.mint_rate_per_minute, created)
        token = mint(signing_key, tenant=state.tenant_id, audience=state.cfg.gateway.audience, sub=scope.sub,
                     models=list(scope.models), max_tokens=scope.max_tokens, ttl=scope.ttl, uses=scope.uses,
                     budget=scope.budget, rpm=scope.rpm, jti=jti, now=now, cnf=scope.cnf)
        db.add(MintedKey(jti=jti, user_id=account.id, kid=signing_key.kid, scope=record, exp=now + scope.ttl,
                         created_at=created))
    log.info("minted key", extra={"jti": jti, "kid": signing_key.kid, "user": account.username,
                                  "ttl": scope.ttl, "models": list(scope.models)})
    return {"token": token, "jti": jti, "kid": signing_key.kid, "expires_at": now + scope.ttl,
            "scope": record}


def _revocable_key(state: IssuerState, account: Account, jti: str) -> tuple[int, datetime | None]:
    """Exp and revocation time of a key the account may revoke; 404 for any other (no existence leak)."""
    with state.sessions() as db:
        row = db.execute(select(MintedKey, User.tenant_id).join(User, User.id == MintedKey.user_id)
                         .where(MintedKey.jti == jti)).first()
    if row is not None:
        key, owner_tenant = row
        if key.user_id == account.id or (account.is_tenant and owner_tenant == account.tenant_id):
            return key.exp, as_utc(key.revoked_at)
    raise ApiError(404, IssuerError.KEY_NOT_FOUND, "no key with this jti that you may revoke", "jti")


def _mark_revoked(state: IssuerState, jti: str) -> datetime:
    with state.sessions.begin() as db:
        key = db.get(MintedKey, jti)
        assert key is not None  # keys are never deleted
        if key.revoked_at is None:
            key.revoked_at = utcnow()
        revoked_at = as_utc(key.revoked_at)
    assert revoked_at is not None
    return revoked_at


@router.post("/key/revoke", response_model=KeyRevoked, summary="Revoke a minted key by its jti")
async def revoke_key(body: RevokeRequest, state: StateDep, account: AccountDep) -> dict[str, Any]:
    """Tell the gateway (when Redis is configured), then record the revocation."""
    exp, previously = await run_in_threadpool(_revocable_key, state, account, body.jti)
    notified = False
    # Gateway first: if Redis is down nothing is recorded and the client can simply retry.
    if state.redis_url:
        await notify_revoked(state.redis_url, state.tenant_id, body.jti, exp, state.cfg.gateway.leeway_s)
        notified = True
    revoked_at = await run_in_threadpool(_mark_revoked, state, body.jti)
    log.info("revoked key", extra={"jti": body.jti, "user": account.username, "gateway_notified": notified})
    return {"jti": body.jti, "revoked": True, "revoked_at": revoked_at,
            "already_revoked": previously is not None, "gateway_notified": notified}


@router.get("/.well-known/jwks.json", tags=["keys"], summary="Public keys that verify minted keys")
def jwks(state: StateDep, response: Response) -> dict[str, Any]:
    """Every published signing key's public half (active and not yet retired)."""
    # Short cache: after an emergency key removal, verifiers must stop trusting it quickly.
    response.headers["Cache-Control"] = "public, max-age=30"
    return state.keystore.public_jwks()
