"""Check a chat-completions body against a verified key: model, token caps, streaming, params.

The body is only read, never rewritten: what the upstream receives is exactly what was checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dynaseal.claims import VerifiedKey
from dynaseal.errors import ErrorCode, Refusal
from dynaseal.jsonsafe import DuplicateKeyError, loads_strict

# Fields any request may carry even when a key restricts the others with `params.allow`.
CORE_FIELDS = frozenset({"model", "messages", "max_tokens", "max_completion_tokens", "n", "stream",
                         "stream_options", "user"})
MAX_N = 128
# Reservation per message for role and framing tokens, and characters per prompt token: a
# deliberately high estimate, replaced by the real usage when the usage event settles it.
TOKENS_PER_MESSAGE = 4
TOKENS_PER_REQUEST = 3  # the reply's priming tokens, counted in prompt_tokens by OpenAI-style servers
CHARS_PER_TOKEN = 3


@dataclass(frozen=True, slots=True)
class CheckedRequest:
    """What the policy learned about an admitted request."""

    model: str
    stream: bool
    n: int
    max_tokens: int
    prompt_estimate: int

    @property
    def reservation(self) -> int:
        """Tokens to reserve at admit: prompt estimate + n × max_tokens."""
        return self.prompt_estimate + self.n * self.max_tokens


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


def _prompt_estimate(messages: list[Any]) -> int:
    chars = 0
    for message in messages:
        if not isinstance(message, dict):
            raise _invalid("each message must be an object", "messages")
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(len(p.get("text", "")) for p in content if isinstance(p, dict)
                         and isinstance(p.get("text", ""), str))
    return TOKENS_PER_REQUEST + TOKENS_PER_MESSAGE * len(messages) + -(-chars // CHARS_PER_TOKEN)


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


def check_request(body: dict[str, Any], key: VerifiedKey) -> CheckedRequest:
    """Enforce the key's policy on a parsed body; raise Refusal on the first violation."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _invalid("'model' must be a non-empty string", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("'messages' must be a non-empty array", "messages")
    if not key.allows_model(model):
        raise Refusal(ErrorCode.MODEL_NOT_ALLOWED, f"model '{model}' is not allowed for this key", "model")

    n = _int_field(body, "n") or 1
    if n > MAX_N:
        raise _invalid(f"'n' must be at most {MAX_N}", "n")
    caps = [v for v in (_int_field(body, "max_tokens"), _int_field(body, "max_completion_tokens")) if v]
    if not caps:
        raise _invalid("this key caps tokens: set 'max_tokens' or 'max_completion_tokens'", "max_tokens",
                       ErrorCode.MAX_TOKENS_REQUIRED)
    max_tokens = max(caps)
    if n * max_tokens > key.max_tokens:
        raise Refusal(ErrorCode.PARAM_NOT_ALLOWED,
                      f"n × max_tokens = {n * max_tokens} exceeds this key's cap of {key.max_tokens}",
                      "max_tokens")

    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _invalid("'stream' must be a boolean", "stream")
    if stream:
        options = body.get("stream_options")
        if not isinstance(options, dict) or options.get("include_usage") is not True:
            raise _invalid("streaming needs stream_options.include_usage: true so usage can be billed",
                           "stream_options", ErrorCode.STREAM_USAGE_REQUIRED)
    _check_params(body, key)
    return CheckedRequest(model, stream, n, max_tokens, _prompt_estimate(messages))
