"""The callback body, its Standard Webhooks signature, and the HTTP client that delivers it."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import BaseModel
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from dynaseal.pb import UsageEvent
from dynaseal.usage.callbacks import CallbackSigner, callback_body, callback_payload, is_retryable

SECRET = "whsec_ZHluYXNlYWwtZGV2LXdlYmhvb2stc2VjcmV0LTAwMQ=="


def event(**overrides: object) -> UsageEvent:
    """A typical streamed, upstream-billed event."""
    fields: dict[str, object] = {
        "request_id": "req-1", "tenant": "t1", "jti": "key-1", "event_id": "evt-1", "sub": "client1",
        "model": "deepseek-chat", "stream": True, "status": 200, "response_flags": "-", "prompt_tokens": 12,
        "completion_tokens": 45, "total_tokens": 57, "reserved": 80, "usage_source": "upstream",
        "started_at": "2026-11-23T10:32:22.903Z", "duration_ms": 812, "path": "/v1/chat/completions",
        "content": "Hello edge", "cb_json": '{"order": 7}',
    }
    fields.update(overrides)
    return UsageEvent(**fields)  # type: ignore[arg-type]


def test_body_has_the_design_fields() -> None:
    body = json.loads(callback_body(event(), include_content=True))
    assert body == {
        "type": "usage", "event_id": "evt-1", "content": "Hello edge", "tokens": 57,
        "usage": {"prompt_tokens": 12, "completion_tokens": 45, "total_tokens": 57,
                  "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                  "completion_tokens_details": {"reasoning_tokens": 0}},
        "cost": None, "usage_source": "upstream", "model": "deepseek-chat", "key_id": "key-1", "sub": "client1",
        "request_id": "req-1", "status": 200, "stream": True, "started_at": "2026-11-23T10:32:22.903Z",
        "duration_ms": 812, "cb": {"order": 7}, "endpoint": "chat_completions",
    }


def test_content_only_when_the_tenant_asks() -> None:
    assert callback_payload(event(), include_content=False)["content"] == ""
    assert callback_payload(event(content=None), include_content=True)["content"] == ""


def test_missing_optional_fields_become_null_and_empty() -> None:
    bare = UsageEvent(request_id="r", tenant="t", jti="k", event_id="k", usage_source="none", status=500)
    payload = callback_payload(bare, include_content=True)
    assert payload["sub"] is None and payload["content"] == "" and payload["cb"] == {}
    assert payload["tokens"] == 0 and payload["status"] == 500


def test_bad_cb_json_does_not_break_the_callback() -> None:
    assert callback_payload(event(cb_json="{not json"), include_content=False)["cb"] == {}


def test_signature_verifies_with_the_tenant_secret_and_webhook_id_is_the_request_id() -> None:
    body = callback_body(event(), include_content=True)
    headers = CallbackSigner.from_secret(SECRET).headers("req-1", body)
    assert headers["webhook-id"] == "req-1"
    assert headers["content-type"] == "application/json"
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(SECRET).verify(body, headers)["request_id"] == "req-1"


def test_every_attempt_has_a_fresh_timestamp_and_the_same_id() -> None:
    signer = CallbackSigner.from_secret(SECRET)
    body = callback_body(event(), include_content=False)
    now = datetime.now(UTC)
    first = signer.headers("req-1", body, now - timedelta(minutes=4))
    retry = signer.headers("req-1", body, now)
    assert first["webhook-id"] == retry["webhook-id"]
    assert first["webhook-timestamp"] != retry["webhook-timestamp"]
    assert first["webhook-signature"] != retry["webhook-signature"]
    Webhook(SECRET).verify(body, retry)


def test_tampered_body_or_other_secret_fails_verification() -> None:
    body = callback_body(event(), include_content=False)
    headers = CallbackSigner.from_secret(SECRET).headers("req-1", body)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.replace(b"57", b"5"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_b3RoZXItc2VjcmV0LW90aGVyLXNlY3JldA==").verify(body, headers)


@pytest.mark.parametrize(("status", "retry"), [(500, True), (502, True), (503, True), (408, True), (429, True),
                                               (400, False), (401, False), (404, False), (410, False),
                                               (301, False)])
def test_which_statuses_are_retried(status: int, retry: bool) -> None:
    assert is_retryable(status) is retry


# The consumer's HTTP client (callback_consumer.http_client): aiohttp, keep-alive per tenant, POSTs resent once.

class _Server:
    """A scripted HTTP/1.1 server: answers each request with the next canned reply, counts connections."""

    def __init__(self, replies: list[bytes]) -> None:
        self.replies = replies
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.AbstractServer | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                self.requests.append(head + await reader.readexactly(length))
                reply = self.replies.pop(0)
                if reply == b"drop":  # the connection closed under the request, nothing answered
                    break
                if reply == b"hang":
                    await asyncio.sleep(10)
                writer.write(reply)
                await writer.drain()
                if b"connection: close" in reply.lower():
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1/callback/usage?tenant=t1"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
CHUNKED = b"HTTP/1.1 503 Unavailable\r\nretry-after: 7\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
CLOSE = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


def test_client_reuses_connections_and_reads_chunked_replies() -> None:
    from callback_consumer.http_client import CallbackClient

    async def scenario() -> None:
        server = _Server([OK, CHUNKED, OK])
        async with server as url:
            client = CallbackClient(url)
            first = await client.post(b"{}", {"webhook-id": "a"}, 2)
            second = await client.post(b"{}", {"webhook-id": "b"}, 2)
            third = await client.post(b"{}", {"webhook-id": "c"}, 2)
            await client.aclose()
        assert (first.status, second.status, third.status) == (200, 503, 200)
        assert second.retry_after == "7"
        assert server.connections == 1
        assert server.requests[0].startswith(b"POST /v1/callback/usage?tenant=t1 HTTP/1.1\r\n")
        assert b"webhook-id: a" in server.requests[0] and server.requests[0].endswith(b"{}")

    asyncio.run(scenario())


def test_client_opens_a_new_connection_when_the_receiver_closed_one() -> None:
    from callback_consumer.http_client import CallbackClient

    async def scenario() -> None:
        server = _Server([CLOSE, OK])
        async with server as url:
            client = CallbackClient(url)
            assert (await client.post(b"{}", {}, 2)).status == 200
            assert (await client.post(b"{}", {}, 2)).status == 200
            await client.aclose()
        assert server.connections == 2

    asyncio.run(scenario())


def test_client_times_out_and_reports_connection_errors() -> None:
    from conftest import free_ports

    from callback_consumer.http_client import CallbackClient, CallbackTransportError

    async def scenario() -> None:
        async with _Server([b"hang"]) as url:
            hanging = CallbackClient(url)
            with pytest.raises(TimeoutError):
                await hanging.post(b"{}", {}, 0.2)
            await hanging.aclose()
        refused = CallbackClient(f"http://127.0.0.1:{free_ports(1)[0]}/cb")
        with pytest.raises(CallbackTransportError):
            await refused.post(b"{}", {}, 2)
        await refused.aclose()

    asyncio.run(scenario())


def test_client_rejects_non_http_urls() -> None:
    from callback_consumer.http_client import CallbackClient

    with pytest.raises(ValueError):
        CallbackClient("ftp://example.com/cb")


def test_client_resends_a_post_on_a_fresh_connection_when_the_receiver_dropped_an_idle_one() -> None:
    """A receiver that closes idle keep-alive connections without saying so (uvicorn after 5 s, nginx after 75 s)
    costs no failed attempt."""
    from callback_consumer.http_client import CallbackClient

    async def scenario() -> None:
        connections: list[int] = []
        dropped = asyncio.Event()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections.append(1)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            await reader.readexactly(length)
            writer.write(OK)  # keep-alive as far as the client can tell: no `connection: close`
            await writer.drain()
            writer.close()  # then dropped while idle
            await writer.wait_closed()
            dropped.set()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/cb"
        client = CallbackClient(url)
        try:
            assert (await client.post(b"{}", {}, 2)).status == 200
            await dropped.wait()
            assert (await client.post(b"{}", {}, 2)).status == 200
        finally:
            await client.aclose()
            server.close()
        assert len(connections) == 2

    asyncio.run(scenario())


class SeedUsageCallback(BaseModel):
    """The original Dynaseal backend's callback model, as it declares it (extra fields ignored)."""

    event_id: str
    content: str
    tokens: int


@pytest.mark.parametrize("include_content", [True, False])
@pytest.mark.parametrize("fields", [{}, {"content": None}, {"sub": None}, {"usage_source": "none", "status": 500},
                                    {"event_id": "12345"}])
def test_every_callback_satisfies_the_seed_backends_model(include_content: bool, fields: dict[str, object]) -> None:
    payload = callback_payload(event(**fields), include_content=include_content)
    parsed = SeedUsageCallback.model_validate_json(orjson.dumps(payload))  # strict types, as pydantic parses JSON
    assert parsed.tokens == payload["tokens"] and isinstance(parsed.content, str)


def test_client_resends_a_post_whose_kept_alive_connection_closed_under_it() -> None:
    """The receiver's idle timeout fires as the POST arrives: aiohttp resends only idempotent methods itself, the
    client resends the callback once on a fresh connection (idempotent by its webhook-id)."""
    from callback_consumer.http_client import CallbackClient

    async def scenario() -> None:
        server = _Server([OK, b"drop", OK])
        async with server as url:
            client = CallbackClient(url)
            assert (await client.post(b"{}", {"webhook-id": "a"}, 2)).status == 200
            assert (await client.post(b"{}", {"webhook-id": "b"}, 2)).status == 200
            await client.aclose()
        assert server.connections == 2
        assert [b"webhook-id: b" in r for r in server.requests] == [False, True, True]

    asyncio.run(scenario())


def test_client_follows_no_redirect_and_keeps_no_cookie() -> None:
    from callback_consumer.http_client import CallbackClient

    redirect = b"HTTP/1.1 307 Temporary Redirect\r\nlocation: http://127.0.0.1:1/elsewhere\r\nset-cookie: s=1\r\n" \
               b"content-length: 0\r\n\r\n"

    async def scenario() -> None:
        server = _Server([redirect, OK])
        async with server as url:
            client = CallbackClient(url)
            assert (await client.post(b"{}", {}, 2)).status == 307  # the consumer decides what a 3xx means
            assert (await client.post(b"{}", {}, 2)).status == 200
            await client.aclose()
        assert len(server.requests) == 2 and not any(b"cookie" in r.lower() for r in server.requests)

    asyncio.run(scenario())


def test_client_keeps_a_small_reply_body_and_drops_a_large_one() -> None:
    from callback_consumer.http_client import MAX_DISCARDED_BODY, CallbackClient

    size = 4 * MAX_DISCARDED_BODY
    large = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size + b"x" * size

    async def scenario() -> None:
        server = _Server([large, OK])
        async with server as url:
            client = CallbackClient(url)
            first = await client.post(b"{}", {}, 2)
            second = await client.post(b"{}", {}, 2)
            await client.aclose()
        assert (first.status, first.body) == (200, b"")
        assert (second.status, second.body) == (200, b"ok")
        assert server.connections == 2  # the connection with the unread rest was dropped, not reused

    asyncio.run(scenario())


def test_client_sends_only_the_callers_headers() -> None:
    from callback_consumer.http_client import USER_AGENT, CallbackClient

    async def scenario() -> None:
        server = _Server([OK])
        async with server as url:
            client = CallbackClient(url)
            await client.post(b"{}", {"content-type": "application/json", "webhook-id": "a"}, 2)
            await client.aclose()
        head = server.requests[0].split(b"\r\n\r\n")[0].lower().split(b"\r\n")
        names = sorted(line.split(b":")[0] for line in head[1:])
        assert names == [b"content-length", b"content-type", b"host", b"user-agent", b"webhook-id"]
        assert f"user-agent: {USER_AGENT}".encode() in head

    asyncio.run(scenario())


def _self_signed(directory: Path) -> ssl.SSLContext:
    """A server context with a certificate for 127.0.0.1 that no client trusts."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "untrusted receiver")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=1))
            .not_valid_after(now + timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    return context


def test_client_refuses_a_receiver_whose_certificate_it_cannot_verify(tmp_path: Path) -> None:
    """The signed body never goes to a receiver that cannot prove who it is: a connection error (retried), not a
    crash of the delivery."""
    from callback_consumer.http_client import CallbackClient, CallbackTransportError

    async def scenario() -> None:
        requests: list[bytes] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                requests.append(await reader.readuntil(b"\r\n\r\n"))
            except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=_self_signed(tmp_path))
        client = CallbackClient(f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/cb")
        try:
            with pytest.raises(CallbackTransportError, match="cannot connect"):
                await client.post(b"{}", {}, 5)
        finally:
            await client.aclose()
            server.close()
        assert requests == []

    asyncio.run(scenario())
