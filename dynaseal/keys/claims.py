"""Claims of a verified dynamic key, checked and intersected with the tenant's ceilings.

Native claims and the seed's claim names (`api-key`, `model`, `expiring`) end up in the same
`VerifiedKey`; nothing downstream needs to know which format a key used. The names read here are the
ones the claims model defines (dynaseal.keys.key_claims), the model minting writes.
"""

from __future__ import annotations

import decimal
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import orjson

from dynaseal.errors import ErrorCode, Refusal
from dynaseal.keys.dpop import Confirmation, confirmation
from dynaseal.keys.key_claims import SEED_CLAIMS
from dynaseal.keys.origins import parse_origins_claim
from dynaseal.keys.tenants import Registry, Tenant, VerificationKey
from dynaseal.money.pricing import MICROS, to_micros
from dynaseal.tenant_config import ParamLimit

MAX_CB_BYTES = 1024
MAX_BUDGET_COST = Decimal(10**9)


@dataclass(frozen=True, slots=True)
class VerifiedKey:
    """A dynamic key whose signature and claims have been checked."""

    tenant: Tenant
    jti: str
    exp: float
    event_id: str
    sub: str | None
    models: frozenset[str] | None
    max_tokens: int
    budget: int | None
    uses: int | None
    rpm: int | None
    param_limits: Mapping[str, ParamLimit] = field(default_factory=dict)
    allowed_params: frozenset[str] | None = None
    cb: Mapping[str, Any] | None = None
    seed_format: bool = False
    # `cnf` (RFC 7800/9449): the thumbprint every request's DPoP proof must match; None = a bearer key.
    cnf_jkt: str | None = None
    # `cnf.jwk`: the holder's public key, which may also sign narrowed child keys (dynaseal.keys.attenuation).
    holder: VerificationKey | None = None
    # A child key's parent (verified, its limits in force); None for a key the tenant signed.
    parent: VerifiedKey | None = None
    depth: int = 0
    # Budget in money: integer micro-units of the tenant's currency (`budget_cost` claim, capped by the
    # tenant's `limits.budget_cost`).
    budget_cost: int | None = None
    # `origins` claim: the web pages this key may be used from (dynaseal.keys.origins); None = any the
    # tenant allows.
    origins: frozenset[str] | None = None

    def allows_model(self, model: str) -> bool:
        """Key allowlist ∩ tenant allowlist."""
        return (self.models is None or model in self.models) and self.tenant.allows_model(model)

    @property
    def chain(self) -> tuple[VerifiedKey, ...]:
        """Every level from the tenant's key (the root) down to this one."""
        levels: list[VerifiedKey] = []
        node: VerifiedKey | None = self
        while node is not None:
            levels.append(node)
            node = node.parent
        return tuple(reversed(levels))

    @property
    def root(self) -> VerifiedKey:
        """The tenant-signed key at the top of the chain (this key itself when it has no parent)."""
        return self if self.parent is None else self.parent.root


def _bad(claim: str, why: str = "is malformed") -> Refusal:
    return Refusal(ErrorCode.INVALID_API_KEY, f"dynamic key claim '{claim}' {why}")


def _number(payload: Mapping[str, Any], name: str, required: bool = False) -> float | None:
    value = payload.get(name)
    if value is None:
        if required:
            raise _bad(name, "is required")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(name)
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a timestamp
        raise _bad(name) from None
    if number != number or number in (float("inf"), float("-inf")):
        raise _bad(name)
    return number


def _positive_int(payload: Mapping[str, Any], name: str) -> int | None:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _bad(name, "must be a positive integer")
    return value


def _min_of(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def _budget_cost(payload: Mapping[str, Any], tenant: Tenant) -> int | None:
    """The `budget_cost` claim, `{"amount": "2.50", "currency": "USD"}`, in micro-units; capped by the tenant."""
    raw = payload.get("budget_cost")
    ceiling = None if tenant.limits.budget_cost is None else to_micros(tenant.limits.budget_cost)
    if raw is None:
        return ceiling
    return _min_of(budget_cost_claim(raw, tenant), ceiling)


def budget_cost_claim(raw: Any, tenant: Tenant) -> int:
    """A `budget_cost` claim's amount in micro-units of the tenant's currency; Refusal when malformed."""
    if not isinstance(raw, dict) or set(raw) != {"amount", "currency"}:
        raise _bad("budget_cost", 'must be {"amount": "<decimal>", "currency": "<ISO 4217>"}')
    if raw["currency"] != tenant.currency:
        # Never convert: a budget in another currency than the tenant's prices has no meaning here.
        raise _bad("budget_cost", f"must be in the tenant's currency ({tenant.currency})")
    value = raw["amount"]
    if isinstance(value, bool) or not isinstance(value, str | int | float) or len(str(value)) > 40:
        raise _bad("budget_cost")
    try:
        amount = Decimal(repr(value) if isinstance(value, float) else str(value))
    except decimal.InvalidOperation:
        raise _bad("budget_cost") from None
    # Bounded so its micro-units stay exact in Redis (Lua numbers are doubles: 2^53).
    if not amount.is_finite() or not 0 < amount <= MAX_BUDGET_COST \
            or amount.normalize().as_tuple().exponent < -MICROS:  # type: ignore[operator]
        raise _bad("budget_cost", f"amount must be in (0, {MAX_BUDGET_COST}] with at most {MICROS} decimals")
    return to_micros(amount)


def _param_limits(raw: Any, tenant: Tenant) -> tuple[dict[str, ParamLimit], frozenset[str] | None]:
    limits = dict(tenant.limits.params)
    if raw is None:
        return limits, None
    if not isinstance(raw, dict):
        raise _bad("params")
    allowed: frozenset[str] | None = None
    for name, spec in raw.items():
        if name == "allow":
            if not isinstance(spec, list) or not all(isinstance(x, str) for x in spec):
                raise _bad("params.allow")
            allowed = frozenset(spec)
            continue
        if not isinstance(spec, dict) or set(spec) - {"min", "max"}:
            raise _bad(f"params.{name}")
        try:
            key_limit = ParamLimit.model_validate(spec)
        except ValueError:
            raise _bad(f"params.{name}") from None
        ceiling = limits.get(name)
        if ceiling is not None:  # a key can only narrow its tenant's range
            lo = [v for v in (key_limit.min, ceiling.min) if v is not None]
            hi = [v for v in (key_limit.max, ceiling.max) if v is not None]
            key_limit = ParamLimit(min=max(lo) if lo else None, max=min(hi) if hi else None)
        limits[name] = key_limit
    return limits, allowed


def _seed_to_native(payload: Mapping[str, Any]) -> dict[str, Any]:
    """Map the seed's claim names onto native ones."""
    model = payload.get("model")
    return {
        "iss": str(payload.get("api-key")),
        "models": [model] if isinstance(model, str) else model,
        "max_tokens": payload.get("max_tokens"),
        "exp": payload.get("expiring"),
        "event_id": payload.get("event_id"),
    }


def tenant_id_of(payload: Mapping[str, Any]) -> str | None:
    """The tenant a payload names (native `iss` or the seed's `api-key`), unverified."""
    iss = payload.get("iss", payload.get("api-key"))
    if isinstance(iss, bool) or not isinstance(iss, str | int):
        return None
    return str(iss)


def check_claims(payload: Mapping[str, Any], tenant: Tenant, registry: Registry, signed_content: bytes,
                 now: float, seed_key: bool = True) -> VerifiedKey:
    """Validate time, audience and limit claims; raise Refusal on the first problem."""
    seed = _is_seed_format(payload, seed_key)
    claims = _seed_to_native(payload) if seed else payload
    exp = _check_lifetime(claims, tenant, registry.leeway_s, now)
    if not seed:
        _check_audience(claims, registry)
    jti, event_id, sub = _identity(claims, signed_content)
    models, key_max, cb = _scope(claims)
    param_limits, allowed = _param_limits(claims.get("params"), tenant)
    cnf = _confirmation(claims)
    origins = _origins(claims)
    return VerifiedKey(
        tenant=tenant,
        jti=jti,
        exp=exp,
        event_id=str(event_id),
        sub=sub,
        models=frozenset(models) if models is not None else None,
        max_tokens=_min_of(key_max, tenant.limits.max_tokens) or tenant.limits.max_tokens,
        budget=_min_of(_positive_int(claims, "budget"), tenant.limits.budget),
        uses=_positive_int(claims, "uses"),
        rpm=_min_of(_positive_int(claims, "rpm"), tenant.limits.rpm),
        param_limits=param_limits,
        allowed_params=allowed,
        cb=cb,
        seed_format=seed,
        cnf_jkt=cnf.jkt if cnf else None,
        holder=cnf.holder if cnf else None,
        budget_cost=_budget_cost(claims, tenant),
        origins=origins,
    )


def _is_seed_format(payload: Mapping[str, Any], seed_key: bool) -> bool:
    """Whether the payload is in the seed's format; refused if it is not exactly the seed's claims."""
    seed = "iss" not in payload and "api-key" in payload
    if seed:
        # The seed's format is the seed's five claims signed with the tenant's kid-less secret, nothing
        # else: a native key in its clothes would drop its own limits (uses, budget, aud, ...) unseen.
        if not seed_key:
            raise _bad("api-key", "(the seed's format) is only accepted with the tenant's seed secret")
        extra = sorted(set(payload) - SEED_CLAIMS)
        if extra:
            raise _bad(extra[0], "is not a claim of the seed's format: use native claims (iss, ...) instead")
    return seed


def _check_lifetime(claims: Mapping[str, Any], tenant: Tenant, leeway: int, now: float) -> float:
    """`exp` (required, not past), `nbf`/`iat` (not ahead) and a lifetime within the tenant's max_ttl; exp."""
    exp = _number(claims, "exp", required=True)
    assert exp is not None
    if now > exp + leeway:
        raise Refusal(ErrorCode.EXPIRED_KEY, "dynamic key has expired")
    nbf = _number(claims, "nbf")
    if nbf is not None and now + leeway < nbf:
        raise _bad("nbf", "is in the future: key not yet valid")
    iat = _number(claims, "iat")
    if iat is not None and now + leeway < iat:
        raise _bad("iat", "is in the future")
    if exp - max(iat or now, now) > tenant.limits.max_ttl:
        raise _bad("exp", f"gives a lifetime over the tenant's max_ttl ({tenant.limits.max_ttl} s)")
    return exp


def _check_audience(claims: Mapping[str, Any], registry: Registry) -> None:
    """A native key names this gateway in `aud`."""
    aud = claims.get("aud")
    auds = aud if isinstance(aud, list) else [aud]
    if registry.audience not in auds:
        raise _bad("aud", "does not name this gateway")


def _identity(claims: Mapping[str, Any], signed_content: bytes) -> tuple[str, str | int, str | None]:
    """The key's `jti` (a hash of the signed content for the seed's format), `event_id` and `sub`."""
    jti = claims.get("jti")
    if jti is None:  # the seed format has no jti: the signed content's hash is a stable id for counters
        jti = "h-" + hashlib.sha256(signed_content).hexdigest()[:32]
    elif not isinstance(jti, str) or not 1 <= len(jti) <= 128:
        raise _bad("jti")
    event_id = claims.get("event_id", jti)
    if isinstance(event_id, bool) or not isinstance(event_id, str | int):
        raise _bad("event_id")
    sub = claims.get("sub")
    if sub is not None and not isinstance(sub, str):
        raise _bad("sub")
    return jti, event_id, sub


def _scope(claims: Mapping[str, Any]) -> tuple[list[str] | None, int | None, dict[str, Any] | None]:
    """The key's `models`, its own `max_tokens` and its `cb` object, each checked for shape."""
    models = claims.get("models")
    if models is not None and (not isinstance(models, list) or not all(isinstance(m, str) for m in models)):
        raise _bad("models")
    key_max = _positive_int(claims, "max_tokens")
    cb = claims.get("cb")
    if cb is not None and (not isinstance(cb, dict) or len(orjson.dumps(cb)) > MAX_CB_BYTES):
        raise _bad("cb", f"must be an object of at most {MAX_CB_BYTES} bytes")
    return models, key_max, cb


def _confirmation(claims: Mapping[str, Any]) -> Confirmation | None:
    """The key's holder binding (`cnf`), if it names one."""
    if claims.get("cnf") is None:
        return None
    try:
        return confirmation(claims["cnf"])
    except ValueError as exc:
        raise _bad("cnf", f"is not usable: {exc}") from None


def _origins(claims: Mapping[str, Any]) -> frozenset[str] | None:
    """The browser origins the key is limited to, if any."""
    try:
        return parse_origins_claim(claims.get("origins"))
    except ValueError as exc:
        raise _bad("origins", str(exc)) from None
