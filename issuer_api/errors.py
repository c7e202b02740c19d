"""The issuer's client-facing errors: one exception type, one OpenAI-shaped JSON envelope.

Every failure a client can see is `{"error": {"message", "type", "code", "param"}}`, including
FastAPI's validation errors (turned into 400) and routing errors (404/405). Anything else is
logged and answered 500 without details, so no internal text (or secret) leaks to a client.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("issuer_api.errors")

# status -> OpenAI `error.type`, so SDK-style clients map our errors the same way as the gateway's.
_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


class ApiError(Exception):
    """An error answered to the client with its status, stable code and optional param."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The JSON envelope for this error."""
        fallback = "server_error" if self.status >= 500 else "invalid_request_error"
        error_type = _TYPE_BY_STATUS.get(self.status, fallback)
        return {"error": {"message": self.message, "type": error_type, "code": self.code,
                          "param": self.param}}

    def response(self) -> JSONResponse:
        """This error as a JSON response."""
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers or None)


def invalid_request(message: str, param: str | None = None, code: str = "invalid_request_error") -> ApiError:
    """A 400 for a malformed request."""
    return ApiError(400, code, message, param)


def unauthenticated(message: str, code: str = "invalid_token") -> ApiError:
    """A 401 asking for bearer credentials."""
    return ApiError(401, code, message, headers={"WWW-Authenticate": "Bearer"})


def forbidden(message: str, code: str, param: str | None = None) -> ApiError:
    """A 403 for a request beyond what the caller may do."""
    return ApiError(403, code, message, param)


def _param_of(loc: tuple[Any, ...] | list[Any]) -> str | None:
    # FastAPI locations start with "body"/"query"/...; the client wants the field path after it.
    parts = [str(p) for p in loc[1:]] if loc and loc[0] in ("body", "query", "header", "path") else []
    return ".".join(parts) or None


async def _on_api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return exc.response()


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {}
    param = _param_of(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        return invalid_request("request body is not valid JSON").response()
    message = str(first.get("msg", "invalid request"))
    return invalid_request(f"{param}: {message}" if param else message, param).response()


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        return ApiError(404, "not_found", f"no route for {request.method} {request.url.path}").response()
    if exc.status_code == 405:
        return ApiError(405, "method_not_allowed", f"method {request.method} not allowed here").response()
    return ApiError(exc.status_code, "http_error", str(exc.detail)).response()


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    # The exception text may quote request data: keep it in the (redacting) log, never in the answer.
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return ApiError(500, "internal_error", "the server could not process the request").response()


def install_error_handlers(app: FastAPI) -> None:
    """Route every error class through the one JSON envelope."""
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
