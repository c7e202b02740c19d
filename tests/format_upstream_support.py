"""Scripted upstreams that speak one provider's APIs each, for routing-by-format tests.

`AnthropicUpstream` speaks Messages (and count_tokens) only, and checks its credential as Anthropic does:
`x-api-key` must be its key, anything else is Anthropic's 401. `OpenAIUpstream` speaks chat completions,
Responses and embeddings, and checks `Authorization: Bearer`. Each answers another API's path with the
404 its provider gives. Bodies come from the bundled mock's builders (mock_llm), so SDKs parse them as
the provider's; every request is recorded (tests/upstream_support.py), the 503/429 behaviours included.
"""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from typing import Any

import orjson
from upstream_support import ScriptedUpstream

from mock_llm.embeddings_api import embeddings_body
from mock_llm.errors import ApiError
from mock_llm.messages_api import AnthropicError, build_message, count_input, message_body, message_events
from mock_llm.responses_api import build_response, response_body, response_events


class AnthropicUpstream(ScriptedUpstream):
    """`POST <base>/messages` and `<base>/messages/count_tokens`, nothing else."""

    def __init__(self, port: int, name: str, api_key: str) -> None:
        self.api_key = api_key
        super().__init__(port, name)

    def _error(self, handler: BaseHTTPRequestHandler, status: int, message: str) -> None:
        error = AnthropicError(status, message)
        self._send(handler, status, "application/json", orjson.dumps(error.payload()),
                   {"retry-after": self.behaviour.retry_after} if status in (429, 503, 529) else {})

    def _answer(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        path = handler.path
        if handler.headers.get("x-api-key") != self.api_key or handler.headers.get("authorization"):
            self._error(handler, 401, "invalid x-api-key")
            return
        if not handler.headers.get("anthropic-version"):
            self._error(handler, 400, "anthropic-version: header is required")
            return
        if self.behaviour.status != 200:
            self._error(handler, self.behaviour.status, "Overloaded")
            return
        try:
            request: Any = json.loads(body)
            if path.endswith("/messages/count_tokens"):
                uncached, read, written, _, _ = count_input(request)
                self._send(handler, 200, "application/json",
                           orjson.dumps({"input_tokens": uncached + read + written}), {})
            elif path.endswith("/messages"):
                run = build_message(request)
                if request.get("stream"):
                    self._send(handler, 200, "text/event-stream", b"".join(message_events(run)), {})
                else:
                    self._send(handler, 200, "application/json", orjson.dumps(message_body(run)),
                               {"request-id": f"req_{self.name}"})
            else:
                self._error(handler, 404, f"Not found: {path}")
        except AnthropicError as exc:
            self._error(handler, exc.status, exc.message)


class OpenAIUpstream(ScriptedUpstream):
    """`POST <base>/chat/completions`, `<base>/responses` and `<base>/embeddings`, nothing else."""

    def __init__(self, port: int, name: str, api_key: str) -> None:
        self.api_key = api_key
        super().__init__(port, name)

    def _answer(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        path = handler.path
        if handler.headers.get("authorization") != f"Bearer {self.api_key}" or handler.headers.get("x-api-key"):
            self._openai_error(handler, ApiError(401, "Incorrect API key provided.", code="invalid_api_key"))
            return
        if path.endswith("/chat/completions"):
            super()._answer(handler, body)
            return
        if self.behaviour.status != 200:
            super()._answer(handler, body)  # OpenAI's error body for the status, with its headers
            return
        try:
            request: Any = json.loads(body)
            if path.endswith("/responses"):
                run = build_response(request)
                if request.get("stream"):
                    self._send(handler, 200, "text/event-stream", b"".join(response_events(run)), {})
                else:
                    self._send(handler, 200, "application/json", orjson.dumps(response_body(run)),
                               {"x-request-id": f"req_{self.name}"})
            elif path.endswith("/embeddings"):
                self._send(handler, 200, "application/json", orjson.dumps(embeddings_body(request)), {})
            else:
                self._openai_error(handler, ApiError(404, f"Invalid URL (POST {path})"))
        except ApiError as exc:
            self._openai_error(handler, exc)

    def _openai_error(self, handler: BaseHTTPRequestHandler, error: ApiError) -> None:
        self._send(handler, error.status, "application/json", orjson.dumps(error.payload()), {})
