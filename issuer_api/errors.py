"""The issuer's client-facing errors: one exception type, one OpenAI-shaped JSON envelope.

Its codes (`IssuerError`), their statuses and types are in the one registry of error codes
(`dynaseal.contracts.error_registry`), beside authz's and Envoy's.

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

from dynaseal.contracts.error_registry import IssuerError, openai_type
from dynaseal.errors import error_envelope

__all__ = ["ApiError", "IssuerError", "forbidden", "install_error_handlers", "invalid_request", "unauthenticated"]

log = logging.getLogger("issuer_api.errors")


class ApiError(Exception):
    """An error answered to the client with its status, stable code and optional param."""

    def __init__(self, status: int, code: IssuerError, message: str, param: str | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The JSON envelope for this error."""
        # The registry's type for this code (dynaseal.contracts.error_registry): the gateway's where it shares it.
        return error_envelope(self.message, openai_type(self.code, self.status), self.code, self.param)

    def response(self) -> JSONResponse:
        """This error as a JSON response."""
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers or None)


def invalid_request(message: str, param: str | None = None,
                    code: IssuerError = IssuerError.INVALID_REQUEST) -> ApiError:
    """A 400 for a malformed request."""
    return ApiError(400, code, message, param)


def unauthenticated(message: str, code: IssuerError = IssuerError.INVALID_TOKEN) -> ApiError:
    """A 401 asking for bearer credentials."""
    return ApiError(401, code, message, headers={"WWW-Authenticate": "Bearer"})


def forbidden(message: str, code: IssuerError, param: str | None = None) -> ApiError:
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
        return ApiError(404, IssuerError.NOT_FOUND, f"no route for {request.method} {request.url.path}").response()
    if exc.status_code == 405:
        return ApiError(405, IssuerError.METHOD_NOT_ALLOWED, f"method {request.method} not allowed here").response()
    return ApiError(exc.status_code, IssuerError.HTTP_ERROR, str(exc.detail)).response()


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    # The exception text may quote request data: keep it in the (redacting) log, never in the answer.
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return ApiError(500, IssuerError.INTERNAL_ERROR, "the server could not process the request").response()


def install_error_handlers(app: FastAPI) -> None:
    """Route every error class through the one JSON envelope."""
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
