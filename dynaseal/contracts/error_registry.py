"""Every error code a client can read, defined once: its HTTP status, its `error.type`, who answers it.

Three answerers share one registry: authz (`ErrorCode`, the closed set of refusals), Envoy's own
replies (`EnvoyReply`, rendered into the config's local replies by `dynaseal.envoy`) and the
issuer (`IssuerError`). A code two of them answer is one entry, so its status and type agree.
The shapes are OpenAI's (`{"error": {message, type, code, param}}`), and on the Messages API
Anthropic's (`{"type": "error", "error": {type, message}}`, its type taken from the status).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

Answerer = Literal["authz", "envoy", "issuer"]


class ErrorCode(StrEnum):
    """authz's refusals; the value is what appears in `error.code` (and the decision metric's label)."""

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


class EnvoyReply(StrEnum):
    """The codes of the replies Envoy makes itself (beside authz's `authz_unavailable` and `request_too_large`)."""

    NOT_FOUND = "not_found"
    REQUEST_TIMEOUT = "request_timeout"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    UPSTREAM_TIMEOUT = "upstream_timeout"


class IssuerError(StrEnum):
    """Every `error.code` the issuer answers with; the codes the gateway also uses have its values."""

    INVALID_REQUEST = ErrorCode.INVALID_REQUEST.value
    REQUEST_TOO_LARGE = ErrorCode.BODY_TOO_LARGE.value
    MODEL_NOT_ALLOWED = ErrorCode.MODEL_NOT_ALLOWED.value
    INVALID_TOKEN = "invalid_token"
    TOKEN_EXPIRED = "token_expired"
    WRONG_TOKEN_TYPE = "wrong_token_type"
    MISSING_TOKEN = "missing_token"
    INVALID_CREDENTIALS = "invalid_credentials"
    TOO_MANY_LOGIN_ATTEMPTS = "too_many_login_attempts"
    SCOPE_NOT_ALLOWED = "scope_not_allowed"
    SUB_NOT_ALLOWED = "sub_not_allowed"
    MODELS_REQUIRED = "models_required"
    KEY_NOT_FOUND = "key_not_found"
    CALLBACK_NOT_CONFIGURED = "callback_not_configured"
    INVALID_SIGNATURE = "invalid_signature"
    INVALID_WEBHOOK_ID = "invalid_webhook_id"
    GATEWAY_UNAVAILABLE = "gateway_unavailable"
    NOT_FOUND = EnvoyReply.NOT_FOUND.value
    METHOD_NOT_ALLOWED = "method_not_allowed"
    HTTP_ERROR = "http_error"
    INTERNAL_ERROR = "internal_error"
    INVALID_DPOP_PROOF = ErrorCode.INVALID_DPOP_PROOF.value
    DPOP_KEY_MISMATCH = "dpop_key_mismatch"
    DPOP_REQUIRED = "dpop_required"
    REFRESH_TOKEN_REUSED = "refresh_token_reused"
    SESSION_REVOKED = "session_revoked"
    USES_ABOVE_LIMIT = "uses_above_limit"
    MINT_RATE_EXCEEDED = "mint_rate_exceeded"


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    """One code: the status and OpenAI `error.type` it is answered with, and by whom."""

    code: str
    status: int
    type: str
    by: frozenset[Answerer]
    # Where the issuer answers the code with another status: RFC 9449 §5 has a token endpoint (the
    # issuer minting a bound key) answer a bad DPoP proof 400, a resource (the gateway) 401.
    issuer_status: int | None = None
    # Envoy's own message, when Envoy answers the code (its local replies are static).
    message: str = ""


def _spec(code: str, status: int, error_type: str, *by: Answerer, issuer_status: int | None = None,
          message: str = "") -> ErrorSpec:
    return ErrorSpec(code, status, error_type, frozenset(by), issuer_status, message)


_INVALID, _AUTH, _PERMISSION = "invalid_request_error", "authentication_error", "permission_error"
SPECS: tuple[ErrorSpec, ...] = (
    _spec(ErrorCode.INVALID_REQUEST, 400, _INVALID, "authz", "envoy", "issuer",
          message="the request body is not a JSON object"),
    _spec(ErrorCode.DUPLICATE_KEY, 400, _INVALID, "authz"),
    _spec(ErrorCode.UNSUPPORTED_ENCODING, 400, _INVALID, "authz"),
    _spec(ErrorCode.MAX_TOKENS_REQUIRED, 400, _INVALID, "authz"),
    _spec(ErrorCode.STREAM_USAGE_REQUIRED, 400, _INVALID, "authz"),
    _spec(ErrorCode.CONTENT_BLOCKED, 400, _INVALID, "authz"),
    _spec(ErrorCode.INVALID_API_KEY, 401, _AUTH, "authz"),
    _spec(ErrorCode.EXPIRED_KEY, 401, _AUTH, "authz"),
    _spec(ErrorCode.REVOKED_KEY, 401, _AUTH, "authz"),
    _spec(ErrorCode.INVALID_DPOP_PROOF, 401, _AUTH, "authz", "issuer", issuer_status=400),
    _spec(ErrorCode.MODEL_NOT_ALLOWED, 403, _PERMISSION, "authz", "issuer"),
    _spec(ErrorCode.PARAM_NOT_ALLOWED, 403, _PERMISSION, "authz"),
    _spec(ErrorCode.ORIGIN_NOT_ALLOWED, 403, _PERMISSION, "authz"),
    _spec(ErrorCode.MODEL_NOT_FOUND, 404, _INVALID, "authz"),
    _spec(ErrorCode.BODY_TOO_LARGE, 413, _INVALID, "authz", "envoy", "issuer",
          message="request body is larger than {max_body_bytes} bytes"),
    _spec(ErrorCode.RATE_LIMITED, 429, "rate_limit_error", "authz"),
    _spec(ErrorCode.INSUFFICIENT_QUOTA, 429, "insufficient_quota", "authz"),
    _spec(ErrorCode.KEY_EXHAUSTED, 429, "rate_limit_error", "authz"),
    _spec(ErrorCode.AUTHZ_UNAVAILABLE, 503, "service_unavailable", "authz", "envoy",
          message="authorization is temporarily unavailable"),
    _spec(EnvoyReply.NOT_FOUND, 404, _INVALID, "envoy", "issuer", "authz",
          message="unknown path: served are POST /v1/chat/completions (also /client-side/), /v1/responses, "
                  "/v1/messages, /v1/messages/count_tokens, /v1/embeddings (each also under /api/v1/) and "
                  "GET /v1/models"),
    _spec(EnvoyReply.REQUEST_TIMEOUT, 408, "timeout", "envoy", message="the request was not received in time"),
    _spec(EnvoyReply.UPSTREAM_UNAVAILABLE, 503, "service_unavailable", "envoy",
          message="no upstream provider could serve the request (%RESPONSE_CODE_DETAILS%)"),
    _spec(EnvoyReply.UPSTREAM_TIMEOUT, 504, "timeout", "envoy", message="the upstream provider did not answer in time"),
    _spec(IssuerError.INVALID_TOKEN, 401, _AUTH, "issuer"),
    _spec(IssuerError.TOKEN_EXPIRED, 401, _AUTH, "issuer"),
    _spec(IssuerError.WRONG_TOKEN_TYPE, 401, _AUTH, "issuer"),
    _spec(IssuerError.MISSING_TOKEN, 401, _AUTH, "issuer"),
    _spec(IssuerError.INVALID_CREDENTIALS, 401, _AUTH, "issuer"),
    _spec(IssuerError.INVALID_SIGNATURE, 401, _AUTH, "issuer"),
    _spec(IssuerError.REFRESH_TOKEN_REUSED, 401, _AUTH, "issuer"),
    _spec(IssuerError.SESSION_REVOKED, 401, _AUTH, "issuer"),
    _spec(IssuerError.MODELS_REQUIRED, 400, _INVALID, "issuer"),
    _spec(IssuerError.INVALID_WEBHOOK_ID, 400, _INVALID, "issuer"),
    _spec(IssuerError.DPOP_KEY_MISMATCH, 400, _INVALID, "issuer"),
    _spec(IssuerError.DPOP_REQUIRED, 400, _INVALID, "issuer"),
    _spec(IssuerError.USES_ABOVE_LIMIT, 400, _INVALID, "issuer"),
    _spec(IssuerError.SCOPE_NOT_ALLOWED, 403, _PERMISSION, "issuer"),
    _spec(IssuerError.SUB_NOT_ALLOWED, 403, _PERMISSION, "issuer"),
    _spec(IssuerError.KEY_NOT_FOUND, 404, "not_found_error", "issuer"),
    _spec(IssuerError.METHOD_NOT_ALLOWED, 405, _INVALID, "issuer"),
    _spec(IssuerError.TOO_MANY_LOGIN_ATTEMPTS, 429, "rate_limit_error", "issuer"),
    _spec(IssuerError.MINT_RATE_EXCEEDED, 429, "rate_limit_error", "issuer"),
    # The status of the HTTP error it reports (e.g. 415 from the framework); its type follows the status.
    _spec(IssuerError.HTTP_ERROR, 400, _INVALID, "issuer"),
    _spec(IssuerError.INTERNAL_ERROR, 500, "server_error", "issuer"),
    _spec(IssuerError.CALLBACK_NOT_CONFIGURED, 503, "service_unavailable", "issuer"),
    _spec(IssuerError.GATEWAY_UNAVAILABLE, 503, "service_unavailable", "issuer"),
)
REGISTRY: Mapping[str, ErrorSpec] = {spec.code: spec for spec in SPECS}

# OpenAI `error.type` by status, for a status no code fixes (the issuer's `http_error`).
_TYPE_BY_STATUS = {400: _INVALID, 401: _AUTH, 403: _PERMISSION, 404: "not_found_error", 405: _INVALID,
                   409: "conflict_error", 413: _INVALID, 429: "rate_limit_error", 503: "service_unavailable"}
# Anthropic's error types by status (its SDK maps the status to an exception class as OpenAI's does).
_ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 529: "overloaded_error"}


def spec_of(code: str) -> ErrorSpec:
    """The registry's entry of a code; KeyError for a code nobody may answer with."""
    return REGISTRY[code]


def status_for(code: str, answerer: Answerer = "authz") -> int:
    """The HTTP status `answerer` gives `code`."""
    spec = REGISTRY[code]
    return spec.issuer_status if answerer == "issuer" and spec.issuer_status is not None else spec.status


def openai_type(code: str, status: int | None = None) -> str:
    """The OpenAI `error.type` of `code` answered with `status` (default: the code's own status).

    A code answered with another status than its own (the issuer's DPoP 400, `http_error`) takes the
    type of that status, so an SDK's exception class and the body's type never disagree.
    """
    spec = REGISTRY[code]
    if status is None or status == spec.status:
        return spec.type
    return _TYPE_BY_STATUS.get(status, "server_error" if status >= 500 else _INVALID)


def anthropic_type(status: int) -> str:
    """Anthropic's `error.type` for an HTTP status (`api_error` for any other)."""
    return _ANTHROPIC_TYPES.get(status, "api_error")
