"""The decision pipeline: named steps, run in order, each readable on its own.

    extract key → verify signature and claims (cached) → check the body → reserve in Redis → allow

Every step either returns what the next needs or raises `Refusal`; anything else is an
internal failure, logged and turned into 503 `authz_unavailable` (fail closed).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import orjson

from dynaseal.claims import VerifiedKey
from dynaseal.decision import Decision, allow, deny, deny_from
from dynaseal.errors import ErrorCode, QuotaUnavailable, Refusal
from dynaseal.key_verification import UnknownKid, VerifiedKeyCache
from dynaseal.remote_jwks import JwksRefresher
from dynaseal.request_policy import CheckedRequest, check_request, parse_body
from dynaseal.tenants import Registry

log = logging.getLogger("dynaseal.authz")

KEY_HEADERS = ("authorization", "dynasealtoken")


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """The parts of an HTTP request a decision needs, independent of Envoy's protos."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    request_id: str = ""


class Quota(Protocol):
    """Atomic admission against a key's counters (revocation, uses, rpm, budget)."""

    async def admit(self, key: VerifiedKey, request: CheckedRequest, request_id: str) -> None:
        """Reserve for this request or raise Refusal."""


def extract_token(headers: Mapping[str, str]) -> str:
    """The dynamic key from `Authorization: Bearer` or `dynasealtoken`."""
    bearer = headers.get("authorization", "")
    scheme, _, value = bearer.partition(" ")
    from_bearer = value.strip() if scheme.lower() == "bearer" else ""
    from_header = headers.get("dynasealtoken", "").strip()
    if bearer and not from_bearer:
        raise Refusal(ErrorCode.INVALID_API_KEY, "Authorization header must be 'Bearer <dynamic key>'")
    if from_bearer and from_header and from_bearer != from_header:
        raise Refusal(ErrorCode.INVALID_API_KEY, "two different dynamic keys were sent")
    token = from_bearer or from_header
    if not token:
        raise Refusal(ErrorCode.INVALID_API_KEY,
                      "no dynamic key: send 'Authorization: Bearer <key>' or a 'dynasealtoken' header")
    return token


class Authorizer:
    """Decides one request at a time against an immutable registry."""

    def __init__(self, registry: Registry, quota: Quota | None = None, cache_size: int = 10_000) -> None:
        self.registry = registry
        self.quota = quota
        self.keys = VerifiedKeyCache(registry, cache_size)
        self.jwks = JwksRefresher()
        self.quota_errors = 0

    async def decide(self, request: AuthRequest) -> Decision:
        """Run every step; never raises."""
        key: VerifiedKey | None = None
        try:
            token = extract_token(request.headers)
            key = await self._verify(token)
            checked = check_request(parse_body(request.body, request.headers), key)
            if self.quota is not None:
                await self.quota.admit(key, checked, request.request_id)
            return self._allow(key, checked)
        except Refusal as refusal:
            return deny_from(refusal, key.jti if key else None)
        except QuotaUnavailable as exc:
            self.quota_errors += 1
            log.warning("counter store unavailable: failing closed", extra={"error": str(exc),
                                                                            "jti": key.jti if key else None})
            return deny(ErrorCode.AUTHZ_UNAVAILABLE, "authorization is temporarily unavailable",
                        jti=key.jti if key else None)
        except Exception:
            log.exception("internal error deciding request_id=%s jti=%s", request.request_id,
                          key.jti if key else "-")
            return deny(ErrorCode.AUTHZ_UNAVAILABLE, "authorization is temporarily unavailable",
                        jti=key.jti if key else None)

    async def _verify(self, token: str) -> VerifiedKey:
        """Verify through the cache, against the latest remote JWKS; on an unknown kid of a jwks_url
        tenant, refresh (rate-limited) and retry once."""
        remote = self.registry.remote_jwks
        if remote is not None and remote.generation != self.registry.remote_generation:
            # A refresh (scheduled or not) changed some tenant's set: rebuild, and drop cached
            # verifications, so a withdrawn kid stops verifying now.
            self.registry = remote.apply(self.registry)
            self.keys = VerifiedKeyCache(self.registry, self.keys.capacity)
        try:
            return self.keys.verify(token)
        except UnknownKid as unknown:
            tenant = self.registry.get(unknown.tenant_id)
            if remote is None or tenant is None or not tenant.jwks_url:
                raise
            await remote.refresh_for_unknown_kid(tenant.id)
            if remote.generation == self.registry.remote_generation:
                raise
            self.registry = remote.apply(self.registry)
            self.keys = VerifiedKeyCache(self.registry, self.keys.capacity)
            return self.keys.verify(token)

    def _allow(self, key: VerifiedKey, checked: CheckedRequest) -> Decision:
        provider_key = key.tenant.provider_key or self.registry.default_provider_key
        headers = {}
        removed: tuple[str, ...] = KEY_HEADERS
        if provider_key is not None:
            headers["authorization"] = f"Bearer {provider_key.get_secret_value()}"
            removed = ("dynasealtoken",)
        metadata: dict[str, str | int | float | bool] = {
            "tenant": key.tenant.id,
            "jti": key.jti,
            "event_id": key.event_id,
            "model": checked.model,
            "stream": checked.stream,
            "reserved": checked.reservation,
        }
        if key.sub is not None:
            metadata["sub"] = key.sub
        if key.cb is not None:  # echoed in callbacks; the claim check bounded it to 1 KiB
            metadata["cb"] = orjson.dumps(key.cb).decode()
        if key.tenant.callback is not None and key.tenant.callback.include_content:
            metadata["capture_content"] = True
        return allow(headers, removed, metadata, key.jti)
