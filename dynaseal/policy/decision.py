"""A decision is a value: allowed or refused, with everything Envoy needs to act on it."""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from dynaseal.errors import ErrorCode, Refusal, anthropic_envelope, error_envelope, should_retry, status_of, type_of


@dataclass(frozen=True, slots=True)
class Decision:
    """Outcome of one authorization check."""

    allowed: bool
    status: int = 200
    code: str = "ok"
    message: str = ""
    param: str | None = None
    # Headers to set on the upstream request (allow) or on the local reply (deny).
    headers: dict[str, str] = field(default_factory=dict)
    headers_to_remove: tuple[str, ...] = ()
    # Dynamic metadata for the access log (namespace envoy.filters.http.ext_authz).
    metadata: dict[str, str | int | float | bool] = field(default_factory=dict)
    # Key id, for logs only; never the key itself.
    jti: str | None = None
    # The gateway's id of this request: reserved under, logged, the usage event's and callback's id.
    request_id: str = ""
    # A body the gateway answers with itself (e.g. the model list), instead of an error body.
    body: bytes | None = None
    # Why an internal failure failed closed (a small closed set, the metric label); "" otherwise.
    reason: str = ""
    # The API whose error shape a refusal takes: "openai", or "anthropic" on /v1/messages.
    errors: str = "openai"
    # The gateway answered the request itself with `body` (the model list, a give-back): neither an
    # allow (nothing goes upstream) nor a refusal (metrics and logs must not count it as one).
    local: bool = False

    @property
    def result(self) -> str:
        """`allow`, `deny` or `answer` (a local answer): the decisions metric's label."""
        return "answer" if self.local else "allow" if self.allowed else "deny"

    def error_body(self) -> bytes:
        """The error body of a refusal in its API's shape (or the gateway's own answer)."""
        if self.body is not None:
            return self.body
        if self.errors == "anthropic":
            return orjson.dumps(anthropic_envelope(self.message, self.code, self.status))
        return orjson.dumps(error_envelope(self.message, type_of(ErrorCode(self.code)), self.code, self.param))


def allow(headers: dict[str, str], headers_to_remove: tuple[str, ...],
          metadata: dict[str, str | int | float | bool], jti: str, request_id: str = "") -> Decision:
    """An allow decision."""
    return Decision(True, 200, "ok", "", None, headers, headers_to_remove, metadata, jti, request_id)


def deny(code: ErrorCode, message: str, param: str | None = None, jti: str | None = None,
         headers: dict[str, str] | None = None, request_id: str = "") -> Decision:
    """A refusal with its status taken from the closed set of codes; one no retry can fix says so."""
    headers = dict(headers or {})
    if not should_retry(code):
        headers["x-should-retry"] = "false"
    return Decision(False, status_of(code), code.value, message, param, headers, (), {}, jti, request_id)


def deny_from(refusal: Refusal, jti: str | None = None, request_id: str = "") -> Decision:
    """Turn a step's `Refusal` into a decision."""
    return deny(refusal.code, refusal.message, refusal.param, jti, headers=dict(refusal.headers) or None,
                request_id=request_id)


def answer(body: bytes, jti: str | None, request_id: str = "") -> Decision:
    """A 200 the gateway gives itself (the request never reaches the upstream): a local answer, not a refusal.

    Envoy sends it as ext_authz's local reply (a "denied" response with status 200), which is also why
    its access-log line carries no usage; everything on the gateway's side counts it as an answer.
    """
    return Decision(False, 200, "ok", "", None, {"content-type": "application/json"}, (), {}, jti, request_id,
                    body, local=True)


def fail_closed(reason: str, jti: str | None = None, request_id: str = "") -> Decision:
    """503 `authz_unavailable` for an internal failure; `reason` (a small closed set) is its metric label."""
    return Decision(False, status_of(ErrorCode.AUTHZ_UNAVAILABLE), ErrorCode.AUTHZ_UNAVAILABLE.value,
                    "authorization is temporarily unavailable", None, {}, (), {}, jti, request_id, reason=reason)
