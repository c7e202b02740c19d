"""The closed set of errors a client can ever see, each with its HTTP status and OpenAI type.

The codes, statuses and types are the registry's (`dynaseal.contracts.error_registry`). A `code`
is the snake_case string clients read in `error.code` and the label of the decision metric.
Anything that is not one of these is an internal failure and becomes `authz_unavailable` (fail closed).
"""

from __future__ import annotations

from dynaseal.contracts.error_registry import ErrorCode, anthropic_type, openai_type, status_for
from dynaseal.safe_text import safe_text

__all__ = ["ErrorCode", "QuotaUnavailable", "Refusal", "anthropic_envelope", "error_envelope", "should_retry",
           "status_of", "type_of"]

# A refusal's message and param are quoted in the answer, the deny log line and the access log: they
# may carry client text, so they are made safe (and bounded) once, here.
MAX_MESSAGE_CHARS = 1024
MAX_PARAM_CHARS = 128


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
    return status_for(code)


def type_of(code: ErrorCode) -> str:
    """OpenAI `error.type` for an error code."""
    return openai_type(code)


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


def anthropic_envelope(message: str, code: str, status: int) -> dict[str, object]:
    """The Anthropic-shaped error body of /v1/messages: {"type": "error", "error": {type, message}}, plus the
    gateway's code beside them (clients that know Anthropic's shape ignore it)."""
    return {"type": "error", "error": {"type": anthropic_type(status), "message": message,
                                       "code": code}}
