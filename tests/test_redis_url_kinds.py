"""What a Redis URL gets from `redis_async.connect`, checked against real servers: TLS URLs speak TLS (a plain
server is an error, never a plaintext session), unix-socket URLs reach the socket, a URL's password appears in
no error text or client repr, and the reservation-age gauge reads scores whatever reply shape the URL's protocol
option gives."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import private_redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection
from redis.exceptions import RedisError

from dynaseal.ledger import redis_keys
from dynaseal.ledger.redis_async import RedisPyAsync, connect
from dynaseal.ledger.reservation_age import oldest_open_reservation_age_s
from dynaseal_launcher.stack import redis_server_binary

SECRET = "s3cret-Pw-7f1e"


def _refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _unix_redis() -> Iterator[Path]:
    """A redis-server listening on a unix socket only; the socket's path."""
    directory = Path(tempfile.mkdtemp(prefix="rv-redis-", dir="/tmp"))  # short: sun_path holds 108 bytes
    path = directory / "redis.sock"
    server = subprocess.Popen([redis_server_binary(), "--port", "0", "--unixsocket", str(path), "--save", "",
                               "--appendonly", "no", "--dir", str(directory)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):  # up to 10 s for the socket to appear
            if path.exists():
                break
            time.sleep(0.05)
        else:
            pytest.fail("redis-server did not open its unix socket")
        yield path
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(directory, ignore_errors=True)


def test_a_unix_socket_url_reaches_the_socket_and_runs_scripts() -> None:
    async def run(url: str) -> tuple[object, list[str]]:
        client = connect(url, timeout_s=2.0)
        try:
            assert isinstance(client, RedisPyAsync) and isinstance(client.client, AsyncRedis)
            assert client.client.connection_pool.connection_class is UnixDomainSocketConnection
            reply = await client.eval_script("redis.call('SET', KEYS[1], ARGV[1]) return redis.call('GET', KEYS[1])",
                                             ["unix-key"], ["over the socket"])
            return reply, [name async for name in client.scan_iter("unix-*")]
        finally:
            await client.aclose()

    with _unix_redis() as path:
        assert asyncio.run(run(f"unix://{path}")) == (b"over the socket", ["unix-key"])


def test_a_tls_url_speaks_tls_and_a_plain_server_is_an_error(redis_server: str) -> None:
    plain = redis_server.replace("redis://", f"rediss://:{SECRET}@", 1)

    async def run() -> None:
        client = connect(plain, timeout_s=2.0)
        try:
            assert isinstance(client, RedisPyAsync) and isinstance(client.client, AsyncRedis)
            assert client.client.connection_pool.connection_class is SSLConnection
            with pytest.raises(RedisError) as failed:
                await client.execute_on("k", "GET", "k")
            assert SECRET not in str(failed.value) and SECRET not in repr(failed.value)
        finally:
            await client.aclose()

    asyncio.run(run())


def _secret_urls(port: int) -> list[str]:
    return [f"redis://:{SECRET}@127.0.0.1:{port}/0", f"redis://user:{SECRET}@127.0.0.1:{port}/0?protocol=2",
            f"rediss://:{SECRET}@127.0.0.1:{port}/0", f"redis+cluster://:{SECRET}@127.0.0.1:{port}",
            f"rediss+cluster://user:{SECRET}@127.0.0.1:{port}"]


@pytest.mark.parametrize("where", ["refused", "wrong_password"])
def test_a_urls_password_is_in_no_error_text_or_repr(redis_server: str, where: str) -> None:
    port = _refused_port() if where == "refused" else int(redis_server.rsplit(":", 1)[1].split("/")[0])

    async def run() -> list[str]:
        texts = []
        for url in _secret_urls(port):
            client = connect(url, timeout_s=1.0)
            texts.append(repr(client))
            try:
                await client.eval_script("return 1", ["k"], [])
                texts.append(f"{url}: no error")
            except Exception as exc:  # every kind: what would reach a log line
                texts += [str(exc), repr(exc), str(exc.__cause__ or ""), str(exc.__context__ or "")]
            finally:
                with contextlib.suppress(Exception):
                    await client.aclose()
        return texts

    texts = asyncio.run(run())
    assert not any("no error" in text for text in texts)  # no URL ran a script with a wrong password
    assert not [text for text in texts if SECRET in text]


@pytest.mark.parametrize("option", ["", "?protocol=2", "?protocol=3"])
def test_the_reservation_age_reads_scores_in_either_reply_shape(tmp_path: Path, option: str) -> None:
    tenant, jti = f"age-{uuid.uuid4().hex[:6]}", "j"
    deadlines = redis_keys.reservation_deadlines(tenant, jti)
    now_ms = 10_000_000
    # Reserved 30 s before now: its deadline is admitted_at + ttl.
    ttl_ms = 60_000

    async def run(url: str) -> float:
        client = connect(url + option, timeout_s=2.0)
        try:
            await client.execute_on(deadlines, "ZADD", deadlines, now_ms - 30_000 + ttl_ms, "r-1")
            return await oldest_open_reservation_age_s(client, now_ms=now_ms, reservation_ttl_ms=ttl_ms)
        finally:
            await client.aclose()

    with private_redis(tmp_path) as url:  # its own server: the gauge reads every tenant's deadlines
        assert asyncio.run(run(url)) == pytest.approx(30.0)
