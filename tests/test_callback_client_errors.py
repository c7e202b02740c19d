"""The callback client against a hostile receiver: every broken reply is a CallbackTransportError or a timeout
(retried like a connection error), never another exception (which would send the event to the DLQ as an internal
error), and a reply that never ends is cut off at MAX_DISCARDED_BODY within the attempt's timeout."""

from __future__ import annotations

import asyncio

import pytest

from callback_consumer.http_client import MAX_DISCARDED_BODY, CallbackClient, CallbackTransportError

HOSTILE = {
    "garbage_status_line": b"HTTP/1.1 abc what\r\n\r\n",
    "not_http": b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
    "huge_header": b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * 200_000 + b"\r\ncontent-length: 0\r\n\r\n",
    "bad_chunking": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "short_body_then_close": b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nshort",
    "bad_content_length": b"HTTP/1.1 200 OK\r\ncontent-length: -5\r\n\r\n",
    "nul_in_header": b"HTTP/1.1 200 OK\r\nx-a: b\x00c\r\ncontent-length: 0\r\n\r\n",
}


async def _serve_once(reply: bytes, endless: bool = False) -> tuple[asyncio.AbstractServer, str]:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(reply)
            await writer.drain()
            while endless:  # a body that never ends, as fast as the client reads it
                writer.write(b"10000\r\n" + b"f" * 65_536 + b"\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/cb?token=url-secret"


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_broken_reply_is_a_transport_error(name: str) -> None:
    async def run() -> None:
        server, url = await _serve_once(HOSTILE[name])
        client = CallbackClient(url)
        try:
            with pytest.raises((CallbackTransportError, TimeoutError)) as failed:
                await client.post(b"{}", {"content-type": "application/json"}, timeout_s=5.0)
            assert "url-secret" not in str(failed.value)  # the URL's own secret stays out of the error
            assert len(str(failed.value)) < 300  # and the receiver's bytes do not fill it
        finally:
            await client.aclose()
            server.close()
            await server.wait_closed()

    asyncio.run(run())


def test_an_endless_reply_body_is_cut_off() -> None:
    async def run() -> tuple[int, int]:
        chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
        server, url = await _serve_once(chunked, endless=True)
        client = CallbackClient(url)
        try:
            reply = await client.post(b"{}", {}, timeout_s=10.0)
            return reply.status, len(reply.body)
        finally:
            await client.aclose()
            server.close()
            await server.wait_closed()

    assert asyncio.run(run()) == (200, 0)  # the status counts; the body past MAX_DISCARDED_BODY is dropped
    assert MAX_DISCARDED_BODY < 1_000_000
