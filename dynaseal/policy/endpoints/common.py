"""Checks every endpoint shares: member names and allowlist, the model, the key's end user, key params."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from dynaseal.errors import ErrorCode, Refusal
from dynaseal.keys.claims import VerifiedKey
from dynaseal.money.pricing import Price
from dynaseal.policy.request_members import KNOWN_MEMBERS, check_members
from dynaseal.policy.request_policy import _check_params, _price
from dynaseal.safe_text import safe_text

# Every member name these APIs define is lowercase snake_case: another spelling is one a lenient
# upstream parser may read as a member the policy did not check.
_NAME = re.compile(r"[a-z0-9_]{1,64}")


def invalid(message: str, param: str | None = None, code: ErrorCode = ErrorCode.INVALID_REQUEST) -> Refusal:
    """A 400 naming the member at fault."""
    return Refusal(code, message, param)


def check_names(objects: Iterable[Any], what: str) -> None:
    """Each object's member names are lowercase a-z, 0-9 and _."""
    for obj in objects:
        if isinstance(obj, dict):
            for name in obj:
                if not _NAME.fullmatch(name):
                    raise invalid(f"{what} has a member {name!r}: names here are lowercase a-z, 0-9 and _", what)


def check_known(body: Mapping[str, Any], key: VerifiedKey, endpoint: str) -> None:
    """The request's members are this endpoint's known set (restricted ones need the tenant) or the tenant's."""
    check_names([body], "request")
    check_members(body, KNOWN_MEMBERS[endpoint], key.tenant.limits.provider_features)


def check_model(body: Mapping[str, Any], key: VerifiedKey) -> str:
    """The model: a non-empty string the key and its tenant allow."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("'model' must be a non-empty string", "model")
    if not key.allows_model(model):
        raise Refusal(ErrorCode.MODEL_NOT_ALLOWED, f"model '{safe_text(model)}' is not allowed for this key",
                      "model")
    return model


def check_end_user(body: Mapping[str, Any], key: VerifiedKey, names: Iterable[str]) -> None:
    """On a key with a `sub`, the end user the provider sees is that sub, not one the client names."""
    if key.sub is None:
        return
    for name in names:
        if body.get(name) not in (None, key.sub):
            raise Refusal(ErrorCode.PARAM_NOT_ALLOWED, f"'{name}' must be this key's end user (its sub)", name)


def check_key_params(body: Mapping[str, Any], key: VerifiedKey, core: frozenset[str]) -> None:
    """The key's `params` limits (min/max, and `allow` beyond this endpoint's core members)."""
    if key.allowed_params is not None:
        for name in body:
            if name not in core and name not in key.allowed_params and name not in key.param_limits:
                raise Refusal(ErrorCode.PARAM_NOT_ALLOWED, f"parameter '{name}' is not allowed by this key", name)
    _check_params({k: v for k, v in body.items() if k in key.param_limits}, key)


def price_of(key: VerifiedKey, model: str) -> Price | None:
    """The model's price (Refusal where an unpriced model may not be served)."""
    return _price(key, model)


def positive_int(body: Mapping[str, Any], name: str) -> int | None:
    """An optional positive integer member."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise invalid(f"'{name}' must be a positive integer", name)
    return value


def check_cap(value: int, key: VerifiedKey, name: str) -> None:
    """An output cap within the key's."""
    if value > key.max_tokens:
        raise Refusal(ErrorCode.PARAM_NOT_ALLOWED, f"{name} = {value} exceeds this key's cap of {key.max_tokens}",
                      name)


def type_of(obj: Mapping[str, Any], what: str, default: str | None = None) -> str | None:
    """An object's `type`: a string, or `default` when absent (400 for anything else: it is compared and
    looked up by value, and a list or object there is a client's error, never the gateway's)."""
    kind = obj.get("type", default)
    if kind is not None and not isinstance(kind, str):
        raise invalid(f"a 'type' in {what} must be a string", what)
    return kind
