"""A decision is a value: allowed or refused, with everything Envoy needs to act on it."""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

from dynaseal.errors import ErrorCode, Refusal, status_of, type_of


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

    def error_body(self) -> bytes:
        """OpenAI-shaped error body for a refusal."""
        return orjson.dumps(
            {"error": {"message": self.message, "type": type_of(ErrorCode(self.code)),
                       "code": self.code, "param": self.param}}
        )


def allow(headers: dict[str, str], headers_to_remove: tuple[str, ...],
          metadata: dict[str, str | int | float | bool], jti: str) -> Decision:
    """An allow decision."""
    return Decision(True, 200, "ok", "", None, headers, headers_to_remove, metadata, jti)


def deny(code: ErrorCode, message: str, param: str | None = None, jti: str | None = None,
         headers: dict[str, str] | None = None) -> Decision:
    """A refusal with its status taken from the closed set of codes."""
    return Decision(False, status_of(code), code.value, message, param, headers or {}, (), {}, jti)


def deny_from(refusal: Refusal, jti: str | None = None) -> Decision:
    """Turn a step's `Refusal` into a decision."""
    return deny(refusal.code, refusal.message, refusal.param, jti)
