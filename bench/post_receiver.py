"""`python -m bench.post_receiver PORT`: a callback receiver for client benchmarks, as cheap as a server can be.

HTTP/1.1 keep-alive on raw asyncio: each request's body is read by its Content-Length and answered
`200 {"status":"stored"}`, so the client under test pays for the exchange and this process for little.
It reads only what the benchmarked clients send (a Content-Length, no chunked bodies) and runs until killed.
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast

import uvloop

REPLY_BODY = b'{"status":"stored"}'
REPLY = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
         % (len(REPLY_BODY), REPLY_BODY))


def _content_length(head: bytes) -> int:
    """The request's Content-Length (0 when it has none)."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


class _Receiver(asyncio.Protocol):
    """One connection: requests parsed from the buffer as they complete, each answered at once."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            total = end + 4 + _content_length(bytes(self.buffer[:end]))
            if len(self.buffer) < total:
                return
            del self.buffer[:total]
            assert self.transport is not None
            self.transport.write(REPLY)


async def serve(port: int) -> None:
    """Serve on 127.0.0.1:port until cancelled; prints `ready` once listening."""
    server = await asyncio.get_running_loop().create_server(_Receiver, "127.0.0.1", port, backlog=256)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    """Run the receiver on the port given."""
    args = sys.argv[1:] if argv is None else argv
    uvloop.run(serve(int(args[0])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
