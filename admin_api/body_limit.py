"""A ceiling on request bodies, before anything parses them.

Envoy bounds bodies only through ext_authz, which is off on the seed's registration routes it sends here,
and the form and JSON parsers hold a whole body in memory: without a ceiling anyone on the gateway's port
could make the admin service hold hundreds of megabytes per request. A declared length over the ceiling is
refused at once; a body sent without one (chunked) is refused as soon as it passes the ceiling.
"""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The seed's login form and its bodiless api_key/create need a few hundred bytes.
SEED_PREFIX, SEED_MAX_BYTES = "/api/v1/", 16 * 1024
# A tenant document with content rules and prices, with room to spare.
MAX_BYTES = 1024 * 1024
# A refused body up to this size is read (and dropped) before the 413: answering while the proxy in front
# is still sending makes the close a reset, which Envoy reports as its own 503 instead of our 413.
DRAIN_MAX_BYTES = 4 * 1024 * 1024


class BodyLimit:
    """ASGI middleware: 413 for a body over the path's ceiling (SEED_MAX_BYTES under /api/v1/, else MAX_BYTES)."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BYTES, seed_max_bytes: int = SEED_MAX_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.seed_max_bytes = seed_max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on with its body counted; refuse it once the count passes the ceiling."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ceiling = self.seed_max_bytes if str(scope.get("path", "")).startswith(SEED_PREFIX) else self.max_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > ceiling):
            if declared.isdigit() and int(declared) <= DRAIN_MAX_BYTES:
                await _drain(receive)
            await _too_large(send, ceiling)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > ceiling:
                    # Raised inside the parser's read: the app's exception handling answers 413.
                    raise HTTPException(413, f"request body above {ceiling} bytes")
            return message

        await self.app(scope, counted, send)


async def _drain(receive: Receive) -> None:
    """Read a refused body to its end without keeping it (bounded by its declared length)."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


async def _too_large(send: Send, ceiling: int) -> None:
    body = json.dumps({"detail": f"request body above {ceiling} bytes"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
