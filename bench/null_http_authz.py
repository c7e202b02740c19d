"""Null HTTP ext_authz servers: parse each check request, allow it with one header, nothing else.

`python -m bench.null_http_authz --port P [--kind raw|uvicorn]`: the floor of a Python HTTP/1.1
authorization server for Envoy's `http_service` ext_authz, measured beside the gRPC floor
(`bench.null_grpc_authz`) by `bench.http_authz`.

- `raw`: an `asyncio.Protocol` on uvloop that splits the byte stream into requests (head, then
  `Content-Length` bytes of body) and answers each batch of whole requests with one write of
  pre-built responses; connections stay open (HTTP/1.1 keep-alive).
- `uvicorn`: the same answers from a bare ASGI app on uvicorn (h11), the "library" variant.

Both allow every request with `x-dynaseal-authz: ok` (Envoy copies it upstream), except one whose
`authorization` is `Bearer deny` (403 with a JSON body), so a bench can tell that the check is on.
Bad input gets a 4xx and the connection closed, never a crash.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

ALLOW_HEADER = "x-dynaseal-authz"
DENY_AUTHORIZATION = b"Bearer deny"
DENY_BODY = b'{"error":{"code":"null_deny","message":"denied by the null authz"}}'
MAX_HEAD_BYTES = 65536
MAX_BODY_BYTES = 1 << 20

ALLOW = f"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n{ALLOW_HEADER}: ok\r\n\r\n".encode()
DENY = (b"HTTP/1.1 403 Forbidden\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(DENY_BODY)).encode() + b"\r\n\r\n" + DENY_BODY)


def _refusal(status: str) -> bytes:
    return f"HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".encode()


BAD_REQUEST = _refusal("400 Bad Request")
TOO_LARGE = _refusal("413 Content Too Large")
HEAD_TOO_LARGE = _refusal("431 Request Header Fields Too Large")


class BadRequest(Exception):
    """The bytes are not a request this server accepts; `answer` is the response to send before closing."""

    def __init__(self, answer: bytes) -> None:
        super().__init__(answer.split(b"\r\n", 1)[0].decode())
        self.answer = answer


def parse_head(head: bytes) -> tuple[int, bytes, bool]:
    """(body length, authorization value, close after answering) from a request head without its blank line."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise BadRequest(BAD_REQUEST)
    length: int | None = None
    authorization, close = b"", parts[2] == b"HTTP/1.0"
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise BadRequest(BAD_REQUEST)
        key, value = name.lower(), value.strip()
        if key == b"content-length":
            # Digits only: "+5", " 5 5" or a second, different length are how request smuggling starts.
            if not value.isdigit() or (length is not None and int(value) != length):
                raise BadRequest(BAD_REQUEST)
            length = int(value)
        elif key == b"transfer-encoding":
            raise BadRequest(BAD_REQUEST)  # Envoy sends a buffered body with a length; nothing else is accepted
        elif key == b"authorization":
            authorization = value
        elif key == b"connection":
            close = value.lower() == b"close"
    if length is not None and length > MAX_BODY_BYTES:
        raise BadRequest(TOO_LARGE)
    return length or 0, authorization, close


def answer(authorization: bytes) -> bytes:
    """The pre-built response for a check request with this authorization value."""
    return DENY if authorization == DENY_AUTHORIZATION else ALLOW


class NullHttpAuthz(asyncio.Protocol):
    """One keep-alive connection from Envoy: whole requests in, one write per batch of answers."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport to answer on."""
        # uvloop's TCP transport is not an asyncio.Transport subclass, but is one in behaviour.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        """Answer every whole request in the buffer; keep a partial one for the next read."""
        assert self.transport is not None
        self.buffer += data
        answers: list[bytes] = []
        close = False
        try:
            while not close:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.buffer) > MAX_HEAD_BYTES:
                        raise BadRequest(HEAD_TOO_LARGE)
                    break
                if end > MAX_HEAD_BYTES:
                    raise BadRequest(HEAD_TOO_LARGE)
                length, authorization, close = parse_head(bytes(self.buffer[:end]))
                whole = end + 4 + length
                if len(self.buffer) < whole:
                    close = False
                    break
                del self.buffer[:whole]
                answers.append(answer(authorization))
        except BadRequest as bad:
            answers.append(bad.answer)
            close = True
        if answers:
            self.transport.write(b"".join(answers))
        if close:
            self.transport.close()


Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def asgi_app(scope: Scope, receive: Receive, send: Send) -> None:
    """The same answers as an ASGI app (the body is read, as a real check of it must)."""
    if scope["type"] != "http":  # served with lifespan off: nothing else comes
        return
    more = True
    while more:
        more = bool((await receive()).get("more_body", False))
    authorization = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
    if authorization == DENY_AUTHORIZATION:
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": DENY_BODY})
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"0"), (ALLOW_HEADER.encode(), b"ok")]})
    await send({"type": "http.response.body", "body": b""})


async def serve_raw(host: str, port: int) -> None:
    """Serve the raw protocol until killed."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(NullHttpAuthz, host, port, backlog=1024)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    """Parse the options and serve."""
    parser = argparse.ArgumentParser(prog="python -m bench.null_http_authz", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--kind", choices=("raw", "uvicorn"), default="raw")
    args = parser.parse_args(argv)
    if args.kind == "uvicorn":
        import uvicorn

        uvicorn.run(asgi_app, host=args.host, port=args.port, loop="uvloop", http="h11", lifespan="off",
                    access_log=False, log_level="warning")
        return 0
    import uvloop

    uvloop.run(serve_raw(args.host, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
