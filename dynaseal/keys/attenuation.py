"""Narrowed child keys: a key's holder signs, offline, a key that can do at most what its parent can.

A key whose `cnf.jwk` names a holder key may have children. A child is a compact JWS with header
`typ: dynaseal-child+jwt`, signed by that holder key (the algorithm pinned by the key's type, never
taken from the header), whose claims carry the parent's whole token in `prn`. Every limit a child
states must lie within its parent's (models ⊆, max_tokens ≤, budget/uses/rpm ≤ the tightest above it,
exp ≤, budget_cost ≤, params narrower, allow ⊆); one that asks for more is refused, not clipped, so the
holder learns at once that the child it minted is not what it meant. What a child leaves out it inherits.
A parameter range may be stated only for a name its parent lets through (its `params.allow` or its
ranges): a range is a permission in the request policy, so a new one would widen the key.
`event_id`, `cb` and `sub` belong to the tenant's key and are inherited; a child may not set them
(a `sub` equal to the parent's is accepted). Any other claim outside CHILD_CLAIMS is refused: a limit
the chain does not read would be a limit its holder believes in and nobody enforces.

The gateway then charges each request to every level, in one Redis script (dynaseal.ledger.quota_scripts).
`ChainKey` is this module's identity mechanism (dynaseal.keys.identity): it unwraps `prn` to the tenant's
key, has that proved by the root mechanisms, then checks each child below it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dynaseal.errors import ErrorCode, Refusal
from dynaseal.keys.claims import VerifiedKey, budget_cost_claim, tenant_id_of
from dynaseal.keys.dpop import ALGORITHMS, Confirmation, DpopProof, confirmation
from dynaseal.keys.identity import JwsToken, Presentation, VerifyContext, invalid
from dynaseal.keys.key_claims import CHILD_CLAIMS
from dynaseal.keys.tenants import Registry
from dynaseal.money.pricing import from_micros
from dynaseal.tenant_config import ParamLimit

CHILD_TYP = "dynaseal-child+jwt"
# Levels below the root a token may nest at all, before any tenant is known (tenants allow at most 4).
MAX_DEPTH = 4
# Every claim a child may carry (CHILD_CLAIMS, from the one claims model) is checked below; `event_id` and
# `cb` have their own refusal.
__all__ = ["CHILD_CLAIMS", "CHILD_TYP", "MAX_DEPTH", "ChainKey", "check_child"]


def _refuse(message: str) -> Refusal:
    return Refusal(ErrorCode.INVALID_API_KEY, f"child key {message}")


def _shown(name: str) -> str:
    """A claim or parameter name as quoted in a refusal: bounded, and escaped by repr (no raw control
    characters or lone surrogates reach the message)."""
    return repr(name[:64])


def _tightest(parent: VerifiedKey, name: str) -> int | None:
    """The smallest `budget`/`uses`/`rpm`/`budget_cost` of the parent and everything above it (None: unlimited)."""
    values = [getattr(level, name) for level in parent.chain if getattr(level, name) is not None]
    return min(values) if values else None


def _count(payload: Mapping[str, Any], name: str, ceiling: int | None) -> int | None:
    value = payload.get(name)
    if value is None:
        return ceiling
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _refuse(f"claim '{name}' must be a positive integer")
    if ceiling is not None and value > ceiling:
        raise _refuse(f"asks for {name} {value}, more than its parent's {ceiling}")
    return value


def _time(payload: Mapping[str, Any], name: str) -> float | None:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value or abs(value) > 1e12:
        raise _refuse(f"claim '{name}' is malformed")
    return float(value)


def _models(payload: Mapping[str, Any], parent: VerifiedKey) -> frozenset[str] | None:
    models = payload.get("models")
    if models is None:
        return parent.models
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise _refuse("claim 'models' is malformed")
    for model in models:
        if not parent.allows_model(model):
            raise _refuse(f"asks for model {model!r}, which its parent may not use")
    return frozenset(models)


def _params(payload: Mapping[str, Any], parent: VerifiedKey) -> tuple[dict[str, ParamLimit], frozenset[str] | None]:
    raw = payload.get("params")
    limits = dict(parent.param_limits)
    if raw is None:
        return limits, parent.allowed_params
    if not isinstance(raw, dict):
        raise _refuse("claim 'params' is malformed")
    allowed = parent.allowed_params
    # What the parent lets through (request_policy): with an allowlist, its names and its ranged names.
    permitted = None if allowed is None else allowed | frozenset(parent.param_limits)
    for name, spec in raw.items():
        if name == "allow":
            allowed = _narrowed_allow(spec, permitted)
            continue
        limits[name] = _narrowed_range(name, spec, permitted, limits.get(name, ParamLimit()))
    return limits, allowed


def _narrowed_allow(spec: object, permitted: frozenset[str] | None) -> frozenset[str]:
    """A child's `params.allow`: a list of names, none outside what its parent lets through."""
    if not isinstance(spec, list) or not all(isinstance(x, str) for x in spec):
        raise _refuse("claim 'params.allow' is malformed")
    wider = set(spec) - permitted if permitted is not None else set()
    if wider:
        raise _refuse(f"allows parameters its parent does not: {sorted(wider)}")
    return frozenset(spec)


def _narrowed_range(name: str, spec: object, permitted: frozenset[str] | None, ceiling: ParamLimit) -> ParamLimit:
    """A child's range for one parameter, within the parent's `ceiling`; what it leaves out it inherits."""
    if not isinstance(spec, dict) or set(spec) - {"min", "max"}:
        raise _refuse(f"claim 'params.{name}' is malformed")
    try:
        asked = ParamLimit.model_validate(spec)
    except ValueError:
        raise _refuse(f"claim 'params.{name}' is malformed") from None
    if permitted is not None and name not in permitted:
        raise _refuse(f"adds a range for parameter {_shown(name)}, which its parent does not allow")
    if ceiling.min is not None and ((asked.min is None and "min" in spec) or
                                    (asked.min is not None and asked.min < ceiling.min)):
        raise _refuse(f"allows {name} below its parent's minimum {ceiling.min}")
    if ceiling.max is not None and ((asked.max is None and "max" in spec) or
                                    (asked.max is not None and asked.max > ceiling.max)):
        raise _refuse(f"allows {name} above its parent's maximum {ceiling.max}")
    return ParamLimit(min=asked.min if asked.min is not None else ceiling.min,
                      max=asked.max if asked.max is not None else ceiling.max)


def _budget_cost(payload: Mapping[str, Any], parent: VerifiedKey) -> int | None:
    """The child's money budget in micro-units: the root's claim format, at most the tightest above it."""
    ceiling = _tightest(parent, "budget_cost")
    if payload.get("budget_cost") is None:
        return ceiling
    raw = payload["budget_cost"]
    if not isinstance(raw, dict) or not isinstance(raw.get("amount"), str):
        raise _refuse('claim \'budget_cost\' must be {"amount": "<decimal string>", "currency": "<ISO 4217>"}')
    try:
        # Parsed like a tenant-signed key's claim; the tenant's own ceiling is already in the root's value.
        asked = budget_cost_claim(raw, parent.tenant)
    except Refusal as refusal:
        raise _refuse(refusal.message.removeprefix("dynamic key ")) from None
    if ceiling is not None and asked > ceiling:
        raise _refuse(f"asks for budget_cost {from_micros(asked)}, more than its parent's {from_micros(ceiling)}")
    return asked


def check_child(parent: VerifiedKey, header: Mapping[str, Any], payload: Mapping[str, Any],
                signing_input: bytes, signature: bytes, audience: str, leeway_s: int,
                now: float) -> VerifiedKey:
    """Verify one child against its verified parent; the result carries the child's limits in force."""
    depth = _check_signed_by_holder(parent, header, signing_input, signature)
    _check_audience(payload, parent, audience)
    exp = _check_times(payload, parent, leeway_s, now)
    jti = _check_identity(payload, parent)
    max_tokens = _count(payload, "max_tokens", parent.max_tokens)
    assert max_tokens is not None
    param_limits, allowed = _params(payload, parent)
    cnf = _confirmation(payload)
    budget_cost = _budget_cost(payload, parent)
    return VerifiedKey(
        tenant=parent.tenant, jti=jti, exp=exp, event_id=parent.event_id, sub=parent.sub,
        models=_models(payload, parent), max_tokens=max_tokens,
        budget=_count(payload, "budget", _tightest(parent, "budget")),
        uses=_count(payload, "uses", _tightest(parent, "uses")),
        rpm=_count(payload, "rpm", _tightest(parent, "rpm")),
        param_limits=param_limits, allowed_params=allowed, cb=parent.cb,
        cnf_jkt=cnf.jkt if cnf else None, holder=cnf.holder if cnf else None,
        parent=parent, depth=depth, budget_cost=budget_cost,
    )


def _check_signed_by_holder(parent: VerifiedKey, header: Mapping[str, Any], signing_input: bytes,
                            signature: bytes) -> int:
    """The child's header and signature, by its parent's holder key, within the tenant's depth; its depth."""
    holder = parent.holder
    if holder is None:
        raise _refuse("has a parent that names no holder key (cnf.jwk): that key cannot have children")
    tenant = parent.tenant
    depth = parent.depth + 1
    if depth > tenant.limits.max_chain_depth:
        raise _refuse(f"is {depth} levels below the tenant's key; tenant {tenant.id} allows "
                      f"{tenant.limits.max_chain_depth}")
    if header.get("typ") != CHILD_TYP:
        raise _refuse(f"header typ must be {CHILD_TYP}")
    if header.get("alg") != holder.alg:
        raise _refuse("algorithm does not match its parent's holder key")
    if any(name in header for name in ("crit", "jku", "jwk", "x5u", "x5c")):
        raise _refuse("header carries parameters that are not accepted")
    try:
        valid = ALGORITHMS[holder.alg].verify(signing_input, holder.key, signature)
    except Exception:
        valid = False
    if not valid:
        raise _refuse("signature does not verify with its parent's holder key")
    return depth


def _check_audience(payload: Mapping[str, Any], parent: VerifiedKey, audience: str) -> None:
    """The child names its parent's tenant as issuer and this gateway as audience."""
    if payload.get("iss") != parent.tenant.id:
        raise _refuse("names another tenant than its parent")
    aud = payload.get("aud")
    if audience not in (aud if isinstance(aud, list) else [aud]):
        raise _refuse("claim 'aud' does not name this gateway")


def _check_times(payload: Mapping[str, Any], parent: VerifiedKey, leeway_s: int, now: float) -> float:
    """The child's `exp` (required, not after its parent's, not past) and `nbf`/`iat` (not ahead); its exp."""
    exp = _time(payload, "exp")
    if exp is None:
        raise _refuse("claim 'exp' is required")
    if exp > parent.exp:
        raise _refuse("expires after its parent")
    if now > exp + leeway_s:
        raise Refusal(ErrorCode.EXPIRED_KEY, "child key has expired")
    for name in ("nbf", "iat"):
        moment = _time(payload, name)
        if moment is not None and now + leeway_s < moment:
            raise _refuse(f"claim '{name}' is in the future")
    return exp


def _check_identity(payload: Mapping[str, Any], parent: VerifiedKey) -> str:
    """The child's own `jti`, no claim its root owns changed, no claim the chain does not enforce; its jti."""
    jti = payload.get("jti")
    if not isinstance(jti, str) or not 1 <= len(jti) <= 128:
        raise _refuse("claim 'jti' is required (a string of at most 128 characters)")
    if any(level.jti == jti for level in parent.chain):
        raise _refuse("reuses the jti of a key above it")
    if payload.get("sub", parent.sub) != parent.sub:
        raise _refuse("may not change 'sub'")
    for inherited in ("event_id", "cb"):
        if inherited in payload:
            raise _refuse(f"may not set '{inherited}': it is its root key's")
    unknown = sorted(set(payload) - CHILD_CLAIMS)
    if unknown:
        raise _refuse(f"carries claims no level of the chain enforces: [{', '.join(map(_shown, unknown[:5]))}]")
    return jti


def _confirmation(payload: Mapping[str, Any]) -> Confirmation | None:
    """The child's own holder binding (`cnf`), if it names one."""
    if payload.get("cnf") is None:
        return None
    try:
        return confirmation(payload["cnf"])
    except ValueError as exc:
        raise _refuse(f"claim 'cnf' is not usable: {exc}") from None


class ChainKey:
    """A child key: its parent's holder signed it, every level within the one above (identity mechanism)."""

    name = "chain"

    def verify(self, token: JwsToken, ctx: VerifyContext) -> VerifiedKey | None:
        """Unwrap `prn` down to the tenant's key, have that proved, then check each child below it in turn."""
        if not token.is_child:
            return None
        children = [token]
        while True:
            parent_token = children[-1].payload["prn"]
            if not isinstance(parent_token, str):
                raise invalid("child key claim 'prn' must be its parent's compact token")
            if len(children) > MAX_DEPTH:
                raise invalid(f"child key is nested deeper than {MAX_DEPTH} levels")
            parsed = JwsToken.parse(parent_token)
            if not parsed.is_child:
                break
            children.append(parsed)
        # Cheap before any signature: a tenant that allows fewer levels refuses here.
        tenant = ctx.registry.get(tenant_id_of(parsed.payload) or "")
        if tenant is not None and len(children) > tenant.limits.max_chain_depth:
            raise invalid(f"child key is {len(children)} levels below its tenant's key; tenant {tenant.id} allows "
                          f"{tenant.limits.max_chain_depth}")
        key = ctx.verify_root(parsed)
        for child in reversed(children):
            key = check_child(key, child.header, child.payload, child.signing_input, child.signature(),
                              ctx.registry.audience, ctx.registry.leeway_s, ctx.now)
        return key

    def bind(self, key: VerifiedKey, presentation: Presentation, registry: Registry,
             now: float) -> DpopProof | None:
        """Nothing of its own per request: a child's `cnf` is checked by DpopBinding like any key's."""
        return None
