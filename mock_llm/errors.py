"""OpenAI-shaped API errors and the JSON response helper shared by every route.

The official SDK maps HTTP status codes to exception classes and reads ``body["error"]``, so every
failure this mock produces, including the injected ones, uses OpenAI's envelope::

    {"error": {"message": ..., "type": ..., "param": ..., "code": ...}}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.responses import Response

JSON_MEDIA_TYPE = "application/json"

# Status -> (type, code, message) used by the ``x-mock-status`` fault hook. Types/codes follow what
# OpenAI actually returns for these statuses (e.g. 429 is type "requests", code "rate_limit_exceeded").
_HOOK_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Mock bad request (injected by x-mock-status)."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided (injected by x-mock-status)."),
    403: ("invalid_request_error", "permission_denied", "Permission denied (injected by x-mock-status)."),
    404: ("invalid_request_error", "not_found", "Not found (injected by x-mock-status)."),
    408: ("timeout", "timeout", "Request timed out (injected by x-mock-status)."),
    409: ("invalid_request_error", "conflict", "Conflict (injected by x-mock-status)."),
    422: ("invalid_request_error", "unprocessable_entity", "Unprocessable entity (injected by x-mock-status)."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests (injected by x-mock-status)."),
    500: ("server_error", "server_error", "The server had an error while processing your request (injected)."),
    502: ("server_error", "bad_gateway", "Bad gateway (injected by x-mock-status)."),
    503: ("server_error", "service_unavailable", "The engine is currently overloaded (injected by x-mock-status)."),
    504: ("server_error", "gateway_timeout", "Gateway timeout (injected by x-mock-status)."),
}


class ApiError(Exception):
    """An error that is rendered as an OpenAI-shaped JSON error response."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code

    def payload(self) -> dict[str, Any]:
        """Return the OpenAI error envelope for this error."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def to_response(self) -> Response:
        """Render this error as a JSON response with its HTTP status."""
        return json_response(self.payload(), status=self.status)


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    """Build a 400 ``invalid_request_error`` like OpenAI's request validation does."""
    return ApiError(400, message, type_="invalid_request_error", param=param, code=code)


def hook_error(status: int) -> ApiError:
    """Build the error injected by ``x-mock-status`` for any 4xx/5xx status."""
    if status in _HOOK_ERRORS:
        type_, code, message = _HOOK_ERRORS[status]
    elif status >= 500:
        type_, code, message = "server_error", "server_error", f"Injected upstream error {status}."
    else:
        type_, code, message = "invalid_request_error", None, f"Injected client error {status}."
    return ApiError(status, message, type_=type_, code=code)


def json_response(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """Serialize ``data`` with orjson (much faster than stdlib json, which matters for benchmarks)."""
    return Response(orjson.dumps(data), status_code=status, headers=headers, media_type=JSON_MEDIA_TYPE)
