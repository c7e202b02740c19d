"""The decision pipeline: named steps, run in order, each readable on its own.

    extract key → verify signature and claims (cached) → check the body → reserve in Redis → allow

Every step either returns what the next needs or raises `Refusal`; anything else is an
internal failure, logged and turned into 503 `authz_unavailable` (fail closed).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Protocol

import orjson

from dynaseal import usage_record
from dynaseal.claims import VerifiedKey
from dynaseal.decision import Decision, allow, answer, deny, deny_from
from dynaseal.errors import ErrorCode, QuotaUnavailable, Refusal
from dynaseal.key_verification import UnknownKid, VerifiedKeyCache
from dynaseal.request_policy import CheckedRequest, check_request, parse_body
from dynaseal.tenants import Registry

log = logging.getLogger("dynaseal.authz")

KEY_HEADERS = ("authorization", "dynasealtoken")
# What a client may say to the provider: framing and content negotiation, nothing that selects a
# provider-side account or feature (OpenAI-Organization, OpenAI-Project, OpenAI-Beta, ...). `host`
# and pseudo-headers cannot be removed (Envoy owns them); x-request-id and accept-encoding are
# overwritten with the gateway's values.
FORWARDED_HEADERS = frozenset({"content-type", "content-length", "accept", "host", "x-request-id",
                               "accept-encoding", "transfer-encoding"})
MODEL_LIST_PATHS = frozenset({"/v1/models", "/api/v1/models"})


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """The parts of an HTTP request a decision needs, independent of Envoy's protos."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes


class Quota(Protocol):
    """Atomic admission against a key's counters (revocation, uses, rpm, budget)."""

    async def admit(self, key: VerifiedKey, request: CheckedRequest, request_id: str) -> None:
        """Reserve for this request or raise Refusal."""


def new_request_id() -> str:
    """A fresh gateway request id (UUID4: ASCII, 36 characters, unguessable)."""
    return str(uuid.uuid4())


def headers_to_strip(headers: Mapping[str, str], forward: frozenset[str], swapped_credential: bool) -> tuple[str, ...]:
    """Every client header the provider must not see: all but the allowlist (and the gateway's own)."""
    keep = FORWARDED_HEADERS | forward
    if swapped_credential:
        keep = keep | {"authorization"}  # overwritten with the provider credential
    return tuple(name for name in headers if name[0] != ":" and name not in keep)


def is_model_list(method: str, path: str) -> bool:
    """`GET /v1/models` (or the seed layout's `/api/v1/models`), query string ignored."""
    return method == "GET" and path.split("?", 1)[0] in MODEL_LIST_PATHS


def model_list(key: VerifiedKey) -> bytes:
    """The OpenAI-shaped list of the models this key may call (key ∩ tenant)."""
    tenant_models = {m for m in key.tenant.limits.models if m != "*"}
    models = tenant_models if key.models is None else {m for m in key.models if key.tenant.allows_model(m)}
    return orjson.dumps({"object": "list", "data": [
        {"id": m, "object": "model", "created": 0, "owned_by": key.tenant.id} for m in sorted(models)]})


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
        self.quota_errors = 0

    async def decide(self, request: AuthRequest) -> Decision:
        """Run every step; never raises. Every decision carries a fresh gateway request id."""
        # The id is minted here, never read from the request: a client-chosen id could replay a
        # reservation or collide with another request's settlement.
        request_id = new_request_id()
        key: VerifiedKey | None = None
        try:
            token = extract_token(request.headers)
            key = await self._verify(token)
            if is_model_list(request.method, request.path):
                return answer(model_list(key), key.jti, request_id)
            checked = check_request(parse_body(request.body, request.headers), key, len(request.body))
            if self.quota is not None:
                await self.quota.admit(key, checked, request_id)
            return self._allow(key, checked, request.headers, request_id)
        except Refusal as refusal:
            return deny_from(refusal, key.jti if key else None, request_id)
        except QuotaUnavailable as exc:
            self.quota_errors += 1
            log.warning("counter store unavailable: failing closed",
                        extra={"error": str(exc), "reason": exc.reason, "jti": key.jti if key else None,
                               "request_id": request_id})
            return replace(deny(ErrorCode.AUTHZ_UNAVAILABLE, "authorization is temporarily unavailable",
                                jti=key.jti if key else None, request_id=request_id), reason=exc.reason)
        except Exception:
            log.exception("internal error deciding request_id=%s jti=%s", request_id, key.jti if key else "-")
            return replace(deny(ErrorCode.AUTHZ_UNAVAILABLE, "authorization is temporarily unavailable",
                                jti=key.jti if key else None, request_id=request_id), reason="internal_error")

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

    def _allow(self, key: VerifiedKey, checked: CheckedRequest, client_headers: Mapping[str, str],
               request_id: str) -> Decision:
        provider_key = key.tenant.provider_key or self.registry.default_provider_key
        # The gateway's id toward the upstream; identity so Envoy can always read the usage it returns.
        headers = {"x-request-id": request_id, "accept-encoding": "identity"}
        if provider_key is not None:
            headers["authorization"] = f"Bearer {provider_key.get_secret_value()}"
        removed = headers_to_strip(client_headers, self.registry.forward_headers, provider_key is not None)
        # What the access log records (dynaseal.usage_record); cb is echoed in callbacks, bounded to 1 KiB.
        metadata = usage_record.authz_metadata(
            request_id=request_id, tenant=key.tenant.id, jti=key.jti, event_id=key.event_id, model=checked.model,
            stream=checked.stream, reserved=checked.reservation, sub=key.sub,
            cb=None if key.cb is None else orjson.dumps(key.cb).decode())
        if checked.body_prefix:
            metadata["body_prefix"] = checked.body_prefix
        if checked.strip_usage:
            metadata["strip_usage"] = True
        if key.tenant.callback is not None and key.tenant.callback.include_content:
            metadata["capture_content"] = True
        return allow(headers, removed, metadata, key.jti, request_id)
