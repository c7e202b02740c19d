"""The closed set of errors a client can ever see, each with its HTTP status and OpenAI type.

A `code` here is the snake_case string clients read in `error.code` and the label of the
decision metric. Anything that is not one of these is an internal failure and becomes
`authz_unavailable` (fail closed).
"""

from __future__ import annotations

from enum import StrEnum

from dynaseal.safe_text import safe_text

# A refusal's message and param are quoted in the answer, the deny log line and the access log: they
# may carry client text, so they are made safe (and bounded) once, here.
MAX_MESSAGE_CHARS = 1024
MAX_PARAM_CHARS = 128


class ErrorCode(StrEnum):
    """User-facing error codes; the value is what appears in `error.code`."""

    INVALID_REQUEST = "invalid_request_error"
    DUPLICATE_KEY = "duplicate_key"
    UNSUPPORTED_ENCODING = "unsupported_content_encoding"
    MAX_TOKENS_REQUIRED = "max_tokens_required"
    STREAM_USAGE_REQUIRED = "stream_usage_required"
    INVALID_API_KEY = "invalid_api_key"
    EXPIRED_KEY = "expired_key"
    REVOKED_KEY = "revoked_key"
    INVALID_DPOP_PROOF = "invalid_dpop_proof"
    MODEL_NOT_ALLOWED = "model_not_allowed"
    PARAM_NOT_ALLOWED = "param_not_allowed"
    BODY_TOO_LARGE = "request_too_large"
    RATE_LIMITED = "rate_limit_exceeded"
    INSUFFICIENT_QUOTA = "insufficient_quota"
    KEY_EXHAUSTED = "key_exhausted"
    AUTHZ_UNAVAILABLE = "authz_unavailable"
    CONTENT_BLOCKED = "content_blocked"
    ORIGIN_NOT_ALLOWED = "origin_not_allowed"
    # An allowed model whose upstreams do not speak the endpoint's API (OpenAI's code for a model it does not serve).
    MODEL_NOT_FOUND = "model_not_found"


# code -> (HTTP status, OpenAI error type). OpenAI SDKs map the status to an exception class.
_STATUS_AND_TYPE: dict[ErrorCode, tuple[int, str]] = {
    ErrorCode.INVALID_REQUEST: (400, "invalid_request_error"),
    ErrorCode.DUPLICATE_KEY: (400, "invalid_request_error"),
    ErrorCode.UNSUPPORTED_ENCODING: (400, "invalid_request_error"),
    ErrorCode.MAX_TOKENS_REQUIRED: (400, "invalid_request_error"),
    ErrorCode.STREAM_USAGE_REQUIRED: (400, "invalid_request_error"),
    ErrorCode.INVALID_API_KEY: (401, "authentication_error"),
    ErrorCode.EXPIRED_KEY: (401, "authentication_error"),
    ErrorCode.REVOKED_KEY: (401, "authentication_error"),
    ErrorCode.INVALID_DPOP_PROOF: (401, "authentication_error"),
    ErrorCode.MODEL_NOT_ALLOWED: (403, "permission_error"),
    ErrorCode.PARAM_NOT_ALLOWED: (403, "permission_error"),
    ErrorCode.BODY_TOO_LARGE: (413, "invalid_request_error"),
    ErrorCode.RATE_LIMITED: (429, "rate_limit_error"),
    ErrorCode.INSUFFICIENT_QUOTA: (429, "insufficient_quota"),
    ErrorCode.KEY_EXHAUSTED: (429, "rate_limit_error"),
    ErrorCode.AUTHZ_UNAVAILABLE: (503, "service_unavailable"),
    ErrorCode.CONTENT_BLOCKED: (400, "invalid_request_error"),
    ErrorCode.ORIGIN_NOT_ALLOWED: (403, "permission_error"),
    ErrorCode.MODEL_NOT_FOUND: (404, "invalid_request_error"),
}


# Refusals a retry of the same request cannot fix: the `openai` and `anthropic` SDKs read
# `x-should-retry: false` and stop at once instead of retrying (a retry would only spend time).
_NOT_RETRYABLE = frozenset(set(ErrorCode) - {ErrorCode.RATE_LIMITED, ErrorCode.AUTHZ_UNAVAILABLE})


def should_retry(code: ErrorCode) -> bool:
    """Whether the same request may succeed later (a rate limit, an outage); False for every other refusal."""
    return code not in _NOT_RETRYABLE


def error_envelope(message: str, error_type: str, code: str,
                   param: str | None = None) -> dict[str, dict[str, str | None]]:
    """The OpenAI-shaped error body every Dynaseal service answers with: {"error": {message, type, code, param}}."""
    return {"error": {"message": message, "type": error_type, "code": code, "param": param}}


def status_of(code: ErrorCode) -> int:
    """HTTP status for an error code."""
    return _STATUS_AND_TYPE[code][0]


def type_of(code: ErrorCode) -> str:
    """OpenAI `error.type` for an error code."""
    return _STATUS_AND_TYPE[code][1]


class Refusal(Exception):
    """A check step refusing the request with one of the closed-set codes."""

    def __init__(self, code: ErrorCode, message: str, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        message = safe_text(message, MAX_MESSAGE_CHARS)
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = None if param is None else safe_text(param, MAX_PARAM_CHARS)
        # Headers of the refusal itself (e.g. a DPoP challenge in WWW-Authenticate).
        self.headers = headers or {}


class QuotaUnavailable(Exception):
    """The counter store could not be reached or answered an error: the caller must fail closed.

    `reason` is one of a small closed set (`redis_error`, `redis_late`, `duplicate_request_id`,
    `no_request_id`): a metric label, so operators can tell the failures apart.
    """

    def __init__(self, message: str, reason: str = "redis_error") -> None:
        super().__init__(message)
        self.reason = reason


# Anthropic's error types by status (its SDK maps the status to an exception class as OpenAI's does).
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 529: "overloaded_error"}


def anthropic_envelope(message: str, code: str, status: int) -> dict[str, object]:
    """The Anthropic-shaped error body of /v1/messages: {"type": "error", "error": {type, message}}, plus the
    gateway's code beside them (clients that know Anthropic's shape ignore it)."""
    return {"type": "error", "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message,
                                       "code": code}}
