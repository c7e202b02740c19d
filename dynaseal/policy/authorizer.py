"""The decision pipeline: named steps, run in order, each readable on its own.

    extract key → verify signature and claims (cached) → check the body → reserve in Redis → allow

Every step either returns what the next needs or raises `Refusal`; anything else is an
internal failure, logged and turned into 503 `authz_unavailable` (fail closed).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import orjson

from dynaseal.contracts import usage_record
from dynaseal.errors import ErrorCode, QuotaUnavailable, Refusal
from dynaseal.keys.claims import VerifiedKey
from dynaseal.keys.dpop import DpopProof
from dynaseal.keys.identity import Presentation
from dynaseal.keys.origins import check_origin
from dynaseal.keys.registry_holder import RegistryHolder
from dynaseal.keys.tenants import Registry
from dynaseal.keys.verification import UnknownKid, VerifiedKeyCache, check_bindings
from dynaseal.policy import give_back
from dynaseal.policy.content_check import ContentBlocked, blocked_decision, check_content
from dynaseal.policy.decision import Decision, allow, answer, deny, deny_from
from dynaseal.policy.endpoints import Endpoint, endpoint_of
from dynaseal.policy.endpoints.credentials import (
    ANTHROPIC_FORWARDED,
    check_betas,
    provider_credential,
    with_api_key,
)
from dynaseal.policy.quota_refusals import Quota, admit_request, check_not_revoked
from dynaseal.policy.request_ids import new_request_id
from dynaseal.policy.request_policy import CheckedRequest, check_request, parse_body
from dynaseal.routing.routes import Route
from dynaseal.routing.routes import choose as choose_route

if TYPE_CHECKING:
    from dynaseal.ledger.give_back import GiveBack

log = logging.getLogger("dynaseal.authz")

KEY_HEADERS = ("authorization", "dynasealtoken")
# What a client may say to the provider: framing and content negotiation, nothing that selects a
# provider-side account or feature (OpenAI-Organization, OpenAI-Project, OpenAI-Beta, ...). `host`
# and pseudo-headers cannot be removed (Envoy owns them); x-request-id and accept-encoding are
# overwritten with the gateway's values.
FORWARDED_HEADERS = frozenset({"content-type", "content-length", "accept", "host", "x-request-id",
                               "accept-encoding", "transfer-encoding",
                               # Envoy's own: route matching (after authz, for routed tenants) needs it; the
                               # virtual host removes it before the provider.
                               "x-forwarded-proto"})
MODEL_LIST_PATHS = frozenset({"/v1/models", "/api/v1/models"})
# Never forwarded, whatever gateway.upstream.forward_headers says: the proof is the gateway's to check.
NEVER_FORWARDED = frozenset({"dpop"})


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """The parts of an HTTP request a decision needs, independent of Envoy's protos."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes


@functools.lru_cache(maxsize=64)
def _kept_headers(forward: frozenset[str], swapped_credential: bool) -> frozenset[str]:
    """The allowlist for one (forward_headers, credential swapped) pair: the same few on every Check."""
    keep = (FORWARDED_HEADERS | forward) - NEVER_FORWARDED
    if swapped_credential:
        keep = keep | {"authorization"}  # overwritten with the provider credential
    return keep


def headers_to_strip(headers: Mapping[str, str], forward: frozenset[str], swapped_credential: bool) -> tuple[str, ...]:
    """Every client header the provider must not see: all but the allowlist (and the gateway's own)."""
    keep = _kept_headers(forward, swapped_credential)
    # The gateway's own routing headers (x-dynaseal-route, -try, -give-back) never come from a client,
    # whatever forward_headers says.
    return tuple(name for name in headers
                 if name[0] != ":" and (name not in keep or name.startswith("x-dynaseal-")))


def is_model_list(method: str, path: str) -> bool:
    """`GET /v1/models` (or the seed layout's `/api/v1/models`), query string ignored."""
    return method == "GET" and path.split("?", 1)[0] in MODEL_LIST_PATHS


def check_method_and_path(method: str, path: str) -> None:
    """Only a POST without a query string is a chat completion.

    On the provider, other methods and queries on the same path are other operations (GET
    /v1/chat/completions lists the account's stored completions): none of them may ride on a key.
    """
    if method != "POST":
        raise Refusal(ErrorCode.INVALID_REQUEST, f"{method} is not served here: this path is POST only")
    if "?" in path or "#" in path:
        raise Refusal(ErrorCode.INVALID_REQUEST, "this path takes no query string")


def model_list(key: VerifiedKey) -> bytes:
    """The OpenAI-shaped list of the models this key may call (key ∩ tenant)."""
    tenant_models = {m for m in key.tenant.limits.models if m != "*"}
    models = tenant_models if key.models is None else {m for m in key.models if key.tenant.allows_model(m)}
    return orjson.dumps({"object": "list", "data": [
        {"id": m, "object": "model", "created": 0, "owned_by": key.tenant.id} for m in sorted(models)]})


def extract_credential(headers: Mapping[str, str]) -> tuple[str, bool]:
    """The dynamic key from `Authorization: Bearer`, `Authorization: DPoP` (RFC 9449 §7.1) or
    `dynasealtoken`, and whether it came under the DPoP scheme."""
    bearer = headers.get("authorization", "")
    scheme, _, value = bearer.partition(" ")
    scheme = scheme.lower()
    from_bearer = value.strip() if scheme in ("bearer", "dpop") else ""
    from_header = headers.get("dynasealtoken", "").strip()
    if bearer and not from_bearer:
        raise Refusal(ErrorCode.INVALID_API_KEY,
                      "Authorization header must be 'Bearer <dynamic key>' (or 'DPoP <dynamic key>')")
    if from_bearer and from_header and from_bearer != from_header:
        raise Refusal(ErrorCode.INVALID_API_KEY, "two different dynamic keys were sent")
    token = from_bearer or from_header
    if not token:
        raise Refusal(ErrorCode.INVALID_API_KEY,
                      "no dynamic key: send 'Authorization: Bearer <key>' or a 'dynasealtoken' header")
    return token, bool(from_bearer) and scheme == "dpop"


def _unavailable(key: VerifiedKey | None, request_id: str, reason: str) -> Decision:
    """503 authz_unavailable, failing closed, with the reason as the metric label."""
    return replace(deny(ErrorCode.AUTHZ_UNAVAILABLE, "authorization is temporarily unavailable",
                        jti=key.jti if key else None, request_id=request_id), reason=reason)


class Authorizer:
    """Decides one request at a time against the registry its holder has in force (never changing it)."""

    def __init__(self, registry: Registry | RegistryHolder, quota: Quota | None = None, cache_size: int = 10_000,
                 giver: GiveBack | None = None) -> None:
        # The holder follows the registry's remote JWKS store: new remote keys are pushed into it.
        self.holder = registry if isinstance(registry, RegistryHolder) else RegistryHolder(registry, cache_size)
        self.quota = quota
        # Gives back what an unserved request took (dynaseal.policy.give_back); None: never given back.
        self.giver = giver

    @property
    def registry(self) -> Registry:
        """The registry in force (its remote keys as the store last pushed them)."""
        return self.holder.registry

    @property
    def keys(self) -> VerifiedKeyCache:
        """The verified-key cache of the registry in force."""
        return self.holder.keys

    async def decide(self, request: AuthRequest) -> Decision:
        """Run every step; never raises. Every decision carries a fresh gateway request id."""
        # The id is minted here, never read from the request: a client-chosen id could replay a
        # reservation or collide with another request's settlement.
        request_id = new_request_id()
        endpoint = endpoint_of(request.path)
        decision = await self._decide(request, request_id, endpoint)
        # Refusals on /v1/messages take Anthropic's shape, so its SDK raises its own exceptions.
        if endpoint is not None and endpoint.errors != "openai" and not decision.allowed:
            decision = replace(decision, errors=endpoint.errors)
        return decision

    async def _decide(self, request: AuthRequest, request_id: str, endpoint: Endpoint | None) -> Decision:
        """The steps in order; never raises."""
        key: VerifiedKey | None = None
        if request.path == give_back.GIVE_BACK_PATH:
            return await self._give_back(request, request_id)
        try:
            headers = with_api_key(request.headers) if endpoint is not None and endpoint.format == "messages" \
                else request.headers
            token, via_dpop = extract_credential(headers)
            key = await self._verify(token)
            # Per request, never cached: how the key was presented (the DPoP sender constraint).
            proof = check_bindings(key, Presentation(token, via_dpop, request.method, request.path, request.headers),
                                   self.registry)
            check_origin(request.headers, key.tenant.id, key.tenant.cors_origins, (k.origins for k in key.chain))
            if is_model_list(request.method, request.path):
                if self.quota is not None:  # reserves nothing, but a revoked key learns nothing either
                    await check_not_revoked(self.quota, key)
                return answer(model_list(key), key.jti, request_id)
            check_method_and_path(request.method, request.path)
            body = parse_body(request.body, request.headers)
            checked = (endpoint.check if endpoint else check_request)(body, key, len(request.body))
            if endpoint is not None and endpoint.format == "messages":
                check_betas(request.headers, key)
            # Before admission: a model its upstreams cannot serve in this API spends nothing.
            route = self.registry.routes.for_request(key.tenant.id, checked.model,
                                                     endpoint.format if endpoint else "chat_completions") \
                if self.registry.routes is not None else None
            # After the body's checks, before admission: a blocked request spends no use, slot or reservation.
            check_content(key, body, api=endpoint.content_api if endpoint else "chat")
            await self._admit(key, checked, request_id, proof, endpoint)
            decision = self._allow(key, checked, request.headers, request_id, request.body, endpoint, route)
            await self._attach_give_back(decision, key, request_id, endpoint)
            return decision
        except ContentBlocked as blocked:
            return blocked_decision(blocked, key, request_id)
        except Refusal as refusal:
            return deny_from(refusal, key.jti if key else None, request_id)
        except QuotaUnavailable as exc:
            log.warning("counter store unavailable: failing closed",
                        extra={"error": str(exc), "reason": exc.reason, "jti": key.jti if key else None,
                               "request_id": request_id})
            return _unavailable(key, request_id, exc.reason)
        except Exception:
            log.exception("internal error deciding request_id=%s jti=%s", request_id, key.jti if key else "-")
            return _unavailable(key, request_id, "internal_error")

    async def _give_back(self, request: AuthRequest, request_id: str) -> Decision:
        """Envoy's give-back of an unserved request; anyone else is told the path does not exist."""
        hmac_key = await self.giver.load_key() if self.giver is not None else None
        ids = give_back.read_token(hmac_key, request.headers.get(give_back.TOKEN_HEADER, "")) \
            if hmac_key is not None and request.method == "POST" else None
        if ids is None:
            return give_back.reply(404, False, request_id)
        tenant_id, path, given_id = ids
        jti = path[-1]
        tenant = self.registry.get(tenant_id)
        try:
            assert self.giver is not None
            given = await self.giver.run(tenant_id, path, given_id, tenant.limits if tenant else None)
        except Exception:
            # Not given back: the request is billed as if served (its reservation settles or expires).
            log.exception("give-back failed request_id=%s jti=%s", given_id, jti)
            return give_back.reply(200, False, request_id)
        log.info("unserved request given back", extra={"request_id": given_id, "jti": jti, "given_back": given})
        return give_back.reply(200, given, request_id)

    async def _verify(self, token: str) -> VerifiedKey:
        """Verify through the cache, against the latest remote JWKS the store pushed; on an unknown kid of
        a jwks_url tenant, have it refreshed (rate-limited) and retry once."""
        try:
            return self.keys.verify(token)
        except UnknownKid as unknown:
            if not await self.holder.refresh_for_unknown_kid(unknown.tenant_id):
                raise
            return self.keys.verify(token)

    def _allow(self, key: VerifiedKey, checked: CheckedRequest, client_headers: Mapping[str, str],
               request_id: str, body: bytes = b"", endpoint: Endpoint | None = None,
               route: Route | None = None) -> Decision:
        routes = self.registry.routes
        # A routed request's credential is chosen per upstream try (in Envoy, from the route's metadata).
        provider_key = None if route is not None else key.tenant.provider_key or self.registry.default_provider_key
        # The gateway's id toward the upstream; identity so Envoy can always read the usage it returns.
        headers = {"x-request-id": request_id, "accept-encoding": "identity"}
        fmt = endpoint.format if endpoint else "chat_completions"
        forward = self.registry.forward_headers
        if provider_key is not None:
            credential = provider_credential(provider_key.get_secret_value(), fmt)
            headers.update(credential)
            forward = forward | frozenset(credential)  # overwritten, not removed
        if fmt == "messages":
            forward = forward | ANTHROPIC_FORWARDED
        removed = headers_to_strip(client_headers, forward - {"authorization"}, "authorization" in headers)
        # What the access log records (dynaseal.contracts.usage_record); cb is echoed in callbacks, bounded to 1 KiB.
        # A child key names its family (root first). Money: the price applied at admit travels with the
        # request, so its cost is computed with the price the reservation used (a config reload in between
        # changes neither); the key's budgets go along for the consumer's threshold callbacks.
        chain = [level.jti for level in key.chain] if key.parent is not None else None
        priced = checked.price is not None  # not priced: the model is unpriced (the event says so)
        metadata = usage_record.authz_metadata(
            request_id=request_id, tenant=key.tenant.id, jti=key.jti, event_id=key.event_id, model=checked.model,
            stream=checked.stream, reserved=checked.reservation, sub=key.sub,
            cb=None if key.cb is None else orjson.dumps(key.cb).decode(),
            root_jti=chain[0] if chain else None, chain=orjson.dumps(chain).decode() if chain else None,
            price=checked.price.encode() if checked.price is not None else None,
            reserved_cost=(checked.reservation_cost or 0) if priced else None,
            budget=key.budget, budget_cost=key.budget_cost,
            endpoint=endpoint.name if endpoint else None)
        if checked.body_prefix:
            metadata[usage_record.BODY_PREFIX] = checked.body_prefix
        if checked.strip_usage:
            metadata[usage_record.STRIP_USAGE] = True
        if key.tenant.callback is not None and key.tenant.callback.include_content:
            metadata[usage_record.CAPTURE_CONTENT] = True
        if route is not None:
            choice = choose_route(route, checked.model, body, checked.body_prefix or "",
                                  lambda provider_key: provider_credential(provider_key, fmt))
            headers.update(choice.headers)
            metadata.update(choice.metadata)
            removed = tuple(name for name in removed if name not in headers)
        if routes is not None and key.tenant.id in routes.provider_headers:
            metadata[usage_record.PROVIDER_HEADERS] = True
        return allow(headers, removed, metadata, key.jti, request_id)

    async def _admit(self, key: VerifiedKey, checked: CheckedRequest, request_id: str, proof: DpopProof | None,
                     endpoint: Endpoint | None) -> None:
        """Admission in the ledger (no ledger configured: none)."""
        if self.quota is None:
            return
        if endpoint is None or endpoint.metered:
            await admit_request(self.quota, key, checked, request_id, proof)
        else:  # generates nothing: reserves nothing, but a revoked key gets nothing either
            await check_not_revoked(self.quota, key)

    async def _attach_give_back(self, decision: Decision, key: VerifiedKey, request_id: str,
                                endpoint: Endpoint | None) -> None:
        """The token Envoy hands back if no upstream served a metered request."""
        metered = endpoint is None or endpoint.metered
        # Loaded once per process: an await (a coroutine) on every Check only to read it back costs more.
        hmac_key = (self.giver.hmac_key or await self.giver.load_key()) if self.giver is not None and metered \
            else None
        if hmac_key is not None:  # the whole chain: a child key's request gives back at every level
            decision.metadata[usage_record.GIVE_BACK] = give_back.make_token(
                hmac_key, key.tenant.id, tuple(level.jti for level in key.chain), request_id)
