"""Check a chat-completions body against a verified key: model, token caps, streaming, params.

The body is never rewritten here. Where metering needs more than the client sent (no token cap,
a stream without usage), the policy decides the gateway's additions (`body_prefix`) and Envoy
inserts exactly those bytes after the body's opening `{`: what the upstream receives is the
checked body plus those keys, nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dynaseal.errors import ErrorCode, Refusal
from dynaseal.jsonsafe import DuplicateKeyError, LoneSurrogateError, loads_strict
from dynaseal.keys.claims import VerifiedKey
from dynaseal.money.pricing import Price
from dynaseal.policy.documents import count_documents, document_tokens
from dynaseal.policy.request_members import (
    CHAT_COMPLETIONS,
    RESTRICTED_FEATURES,
    check_members,
    check_stream_options,
)
from dynaseal.policy.reservation_bound import (
    PROMPT_OVERHEAD_TOKENS,
    TEXT_PART_TYPES,
    allowance_for,
    prompt_bound,
)
from dynaseal.safe_text import safe_text

__all__ = ["CORE_FIELDS", "MAX_N", "PROMPT_OVERHEAD_TOKENS", "RESTRICTED_FEATURES", "TEXT_PART_TYPES",
           "CheckedRequest", "check_member_names", "check_request", "parse_body", "prompt_bound"]

# Fields any request may carry even when a key restricts the others with `params.allow`.
CORE_FIELDS = frozenset({"model", "messages", "max_tokens", "max_completion_tokens", "n", "stream",
                         "stream_options", "user"})
MAX_N = 128
# Member names where the policy reads fields. Every OpenAI field there is lowercase snake_case; a
# name in another spelling (`N`, `Model`, `max_tokens\u0000`) is one a case-insensitive or lossy
# upstream parser may read as the field the policy did not check.
_FIELD_NAME = re.compile(r"[a-z0-9_]{1,64}")


@dataclass(frozen=True, slots=True)
class CheckedRequest:
    """What the policy learned about an admitted request."""

    model: str
    stream: bool
    n: int
    max_tokens: int
    prompt_bound: int
    # JSON members to insert after the body's opening `{` (each followed by a comma), or "".
    body_prefix: str = ""
    # The client did not ask for the usage chunk the gateway asked for: remove it from its stream.
    strip_usage: bool = False
    # The model's price in the tenant's table; None = unpriced (served and flagged, or refused above).
    price: Price | None = None
    # Tokens per choice the model may generate outside max_tokens (the tenant's model_allowances).
    reasoning_tokens: int = 0

    @property
    def completion_bound(self) -> int:
        """An upper bound of the completion tokens: n × (max_tokens + reasoning_tokens)."""
        return self.n * (self.max_tokens + self.reasoning_tokens)

    @property
    def reservation(self) -> int:
        """Tokens to reserve at admit: a true upper bound, prompt bound + completion bound."""
        return self.prompt_bound + self.completion_bound

    @property
    def reservation_cost(self) -> int | None:
        """Micro-units to reserve at admit: the same token bound at each side's dearest price (None: unpriced)."""
        if self.price is None:
            return None
        return self.price.bound_micros(self.prompt_bound, self.completion_bound)


def _invalid(message: str, param: str | None = None, code: ErrorCode = ErrorCode.INVALID_REQUEST) -> Refusal:
    return Refusal(code, message, param)


def parse_body(body: bytes, headers: Mapping[str, str]) -> dict[str, Any]:
    """Parse the request body as a strict JSON object."""
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise _invalid("compressed request bodies are not accepted", code=ErrorCode.UNSUPPORTED_ENCODING)
    ctype = headers.get("content-type", "application/json").split(";", 1)[0].strip().lower()
    if ctype != "application/json":
        raise _invalid("request body must be application/json")
    if not body:
        raise _invalid("request body is empty")
    try:
        parsed = loads_strict(body)
    except DuplicateKeyError as exc:
        raise _invalid(f"request body has a {exc}", code=ErrorCode.DUPLICATE_KEY) from None
    except LoneSurrogateError:
        # "\ud800" alone is JSON syntax but no Unicode text: no encoder downstream (the upstream's, the
        # access log's, protobuf's) can carry it, and each would fail or substitute differently.
        raise _invalid("request body has a lone UTF-16 surrogate escape (\\ud800-\\udfff): not valid Unicode") \
            from None
    except (ValueError, RecursionError):
        raise _invalid("request body is not valid JSON") from None
    if not isinstance(parsed, dict):
        raise _invalid("request body must be a JSON object")
    return parsed


def _int_field(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _invalid(f"'{name}' must be a positive integer", name)
    return value


def _check_names(where: Mapping[str, Any], what: str) -> None:
    for name in where:
        if not _FIELD_NAME.fullmatch(name):
            raise _invalid(f"{what} has a member {name!r}: names here are lowercase a-z, 0-9 and _", what)


def check_member_names(body: Mapping[str, Any]) -> None:
    """The request, its messages, their parts and stream_options name their members as OpenAI does."""
    _check_names(body, "request")
    options = body.get("stream_options")
    if isinstance(options, dict):
        _check_names(options, "stream_options")
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else ():
        if isinstance(message, dict):
            _check_names(message, "messages")
            content = message.get("content")
            for part in content if isinstance(content, list) else ():
                if isinstance(part, dict):
                    _check_names(part, "messages")


def _check_features(body: Mapping[str, Any], key: VerifiedKey) -> None:
    check_members(body, CHAT_COMPLETIONS, key.tenant.limits.provider_features)
    if key.sub is not None:  # the end user the provider sees is the key's, not one the client names
        for name in ("user", "safety_identifier"):
            if body.get(name) not in (None, key.sub):
                raise Refusal(ErrorCode.PARAM_NOT_ALLOWED, f"'{name}' must be this key's end user (its sub)", name)


def _check_params(body: Mapping[str, Any], key: VerifiedKey) -> None:
    if key.allowed_params is not None:
        for name in body:
            if name not in CORE_FIELDS and name not in key.allowed_params and name not in key.param_limits:
                raise Refusal(ErrorCode.PARAM_NOT_ALLOWED, f"parameter '{name}' is not allowed by this key", name)
    for name, limit in key.param_limits.items():
        if name not in body or body[name] is None:
            continue
        value = body[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Refusal(ErrorCode.PARAM_NOT_ALLOWED, f"parameter '{name}' must be a number", name)
        if (limit.min is not None and value < limit.min) or (limit.max is not None and value > limit.max):
            raise Refusal(ErrorCode.PARAM_NOT_ALLOWED,
                          f"parameter '{name}'={value} is outside [{limit.min}, {limit.max}]", name)


def _token_cap(body: Mapping[str, Any], key: VerifiedKey, n: int) -> tuple[int, str]:
    """The per-choice completion cap and, when the client set none, the member the gateway adds."""
    caps = [v for v in (_int_field(body, "max_tokens"), _int_field(body, "max_completion_tokens")) if v]
    limits = key.tenant.limits
    if caps:
        max_tokens = max(caps)
        if n * max_tokens > key.max_tokens:
            raise Refusal(ErrorCode.PARAM_NOT_ALLOWED,
                          f"n × max_tokens = {n * max_tokens} exceeds this key's cap of {key.max_tokens}",
                          "max_tokens")
        if limits.cap_field in body or limits.upstream_reads_both_caps:
            return max_tokens, ""
        # The client capped only the member this upstream does not read (DeepSeek and older vLLM
        # read max_tokens alone): the gateway adds the one it reads, with the same value.
        return max_tokens, f'"{limits.cap_field}":{max_tokens},'

    if limits.strict_requests:
        raise _invalid("this key caps tokens: set 'max_tokens' or 'max_completion_tokens'", "max_tokens",
                       ErrorCode.MAX_TOKENS_REQUIRED)
    if body.get("max_tokens", 0) is None or body.get("max_completion_tokens", 0) is None:
        # An explicit null would sit beside the added member as a duplicate key: refuse, clearly.
        raise _invalid("omit 'max_tokens' / 'max_completion_tokens' or give a positive integer", "max_tokens")
    per_choice = key.max_tokens // n
    if per_choice < 1:
        raise Refusal(ErrorCode.PARAM_NOT_ALLOWED, f"n = {n} exceeds this key's token cap of {key.max_tokens}", "n")
    return per_choice, f'"{limits.cap_field}":{per_choice},'


def _stream_usage(body: Mapping[str, Any], key: VerifiedKey, stream: bool) -> tuple[str, bool]:
    """The member that asks the upstream for usage on a stream, and whether to hide it from the client."""
    if not stream:
        return "", False
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return "", False
    if key.tenant.limits.strict_requests:
        raise _invalid("streaming needs stream_options.include_usage: true so usage can be billed",
                       "stream_options", ErrorCode.STREAM_USAGE_REQUIRED)
    if "stream_options" in body:
        # Amending the client's own object would mean rewriting it; a member added beside it would
        # be a duplicate key that parsers resolve differently. Refuse, saying what works.
        raise _invalid("stream_options must include include_usage: true, or be left out (the gateway then asks "
                       "for usage itself)", "stream_options", ErrorCode.STREAM_USAGE_REQUIRED)
    return '"stream_options":{"include_usage":true},', True


def _price(key: VerifiedKey, model: str) -> Price | None:
    """The model's price, or Refusal when the tenant refuses unpriced models or the key's budget is money."""
    price = key.tenant.price_of(model)
    if price is None and key.tenant.refuse_unpriced:
        raise Refusal(ErrorCode.MODEL_NOT_ALLOWED, f"model '{safe_text(model)}' has no price for this tenant",
                      "model")
    if price is None and key.budget_cost is not None:
        raise Refusal(ErrorCode.MODEL_NOT_ALLOWED,
                      f"model '{safe_text(model)}' has no price and this key's budget is in {key.tenant.currency}",
                      "model")
    return price


def check_request(body: dict[str, Any], key: VerifiedKey, body_size: int = 0) -> CheckedRequest:
    """Enforce the key's policy on a parsed body of `body_size` bytes; raise Refusal on the first violation."""
    check_member_names(body)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _invalid("'model' must be a non-empty string", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("'messages' must be a non-empty array", "messages")
    if not key.allows_model(model):
        raise Refusal(ErrorCode.MODEL_NOT_ALLOWED, f"model '{safe_text(model)}' is not allowed for this key",
                      "model")

    n = _int_field(body, "n") or 1
    if n > MAX_N:
        raise _invalid(f"'n' must be at most {MAX_N}", "n")
    max_tokens, cap_member = _token_cap(body, key, n)

    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _invalid("'stream' must be a boolean", "stream")
    check_stream_options(body)
    usage_member, strip_usage = _stream_usage(body, key, stream)
    _check_features(body, key)
    _check_params(body, key)
    allowance = allowance_for(key.tenant.limits, model)
    prompt = prompt_bound(body_size, messages, key, allowance) + document_tokens(key, count_documents(messages),
                                                                                 "messages")
    return CheckedRequest(model, stream, n, max_tokens, prompt,
                          cap_member + usage_member, strip_usage, _price(key, model), allowance.reasoning_tokens)
