"""Record what the upstream actually received so gateway tests can assert on it.

The recorder sits as raw ASGI middleware (not a Starlette ``BaseHTTPMiddleware``, which would buffer
streaming responses) and sees every request before routing, so even 404s and rejected bodies are
captured with their headers untouched.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEFAULT_MAX_RECORDS = 1000
# Control-plane and liveness paths are not "traffic": recording them would let health probes (from the
# test fixture or Envoy active health checks) interleave with the requests a test wants to inspect.
UNRECORDED_PREFIX = "/_mock/"
UNRECORDED_PATHS = frozenset({"/healthz"})


class RequestRecorder:
    """A bounded, in-memory log of received requests (oldest evicted first)."""

    def __init__(self, maxlen: int = DEFAULT_MAX_RECORDS) -> None:
        self._records: deque[dict[str, Any]] = deque(maxlen=maxlen)

    def add(self, method: str, path: str, headers: dict[str, str], body: Any, raw_body: str = "") -> None:
        """Append one request record (`raw_body`: the bytes as received, latin-1 decoded)."""
        self._records.append({"method": method, "path": path, "headers": headers, "body": body,
                              "raw_body": raw_body})

    def snapshot(self) -> list[dict[str, Any]]:
        """Return the records, oldest first."""
        return list(self._records)

    def clear(self) -> int:
        """Drop all records and return how many there were."""
        count = len(self._records)
        self._records.clear()
        return count

    def __len__(self) -> int:
        return len(self._records)


def headers_as_dict(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    """Convert raw ASGI headers to a dict with lowercase names.

    Values are kept byte-for-byte (latin-1 decoded, as HTTP defines); a repeated header is joined with
    ", ", which is the HTTP-equivalent single-field form.
    """
    headers: dict[str, str] = {}
    for raw_name, raw_value in raw:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


def parse_json(raw: bytes) -> Any:
    """Parse a request body as JSON, returning None when it is empty or not valid JSON."""
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


class RecordingMiddleware:
    """ASGI middleware that buffers the request body, records the request, then replays the body."""

    def __init__(self, app: ASGIApp, recorder: RequestRecorder) -> None:
        self.app = app
        self.recorder = recorder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Record HTTP requests outside the unrecorded prefixes, then hand off to the app."""
        path: str = scope.get("path", "")
        if scope["type"] != "http" or path in UNRECORDED_PATHS or path.startswith(UNRECORDED_PREFIX):
            await self.app(scope, receive, send)
            return

        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # client went away before finishing the body
                break
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        self.recorder.add(scope["method"], path, headers_as_dict(scope["headers"]), parse_json(body),
                          body.decode("latin-1"))

        replayed = False

        async def replay() -> Message:
            # First call returns the buffered body; later calls (disconnect detection during
            # streaming) go to the real channel.
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
