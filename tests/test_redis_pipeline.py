"""The pipelined Redis client of the authz hot path: RESP framing, ordering, timeouts, failures."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from dynaseal.ledger.redis_pipeline import PipelinedRedis, _Incomplete, encode, parse


def test_encode_is_a_resp_array_of_bulk_strings() -> None:
    assert encode(("SET", "k", 12, b"\r\n")) == b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n12\r\n$2\r\n\r\n\r\n"


@pytest.mark.parametrize(("raw", "value"), [
    (b":42\r\n", 42), (b"+PONG\r\n", b"PONG"), (b"$3\r\nabc\r\n", b"abc"), (b"$-1\r\n", None),
    (b"*2\r\n:1\r\n*1\r\n$0\r\n\r\n", [1, [b""]]), (b"*-1\r\n", None),
])
def test_parse_every_reply_type(raw: bytes, value: object) -> None:
    assert parse(raw, 0) == (value, len(raw))


def test_parse_error_reply_is_a_value_not_a_raise() -> None:
    error, end = parse(b"-NOSCRIPT No matching script\r\n", 0)
    assert isinstance(error, ResponseError) and str(error).startswith("NOSCRIPT") and end == 30


@pytest.mark.parametrize("cut", [1, 3, 5, 9, 12])
def test_parse_incomplete_reply_waits_for_more(cut: int) -> None:
    with pytest.raises(_Incomplete):
        parse(b"*2\r\n:1\r\n$3\r\nabc\r\n"[:cut], 0)


def test_only_plain_urls_get_the_pipelined_client() -> None:
    client = PipelinedRedis.from_url("redis://user:p%40ss@10.0.0.1:6380/3", 0.05)
    assert client is not None
    assert (client.host, client.port, client.db, client.username, client.password) == \
        ("10.0.0.1", 6380, 3, "user", "p@ss")
    for url in ("rediss://h:6379/0", "unix:///tmp/redis.sock", "redis://h:6379/0?socket_keepalive=true"):
        assert PipelinedRedis.from_url(url, 0.05) is None


def test_concurrent_commands_get_their_own_replies_in_order(redis_server: str) -> None:
    async def run() -> list[object]:
        client = PipelinedRedis.from_url(redis_server, 2.0)
        assert client is not None
        prefix = uuid.uuid4().hex
        try:
            replies: list[object] = await asyncio.gather(*(client.execute("INCRBY", f"{prefix}:{i % 7}", i)
                                                           for i in range(300)))
            return replies
        finally:
            await client.aclose()
    replies = asyncio.run(run())
    totals: dict[int, int] = {}
    for i, reply in enumerate(replies):
        totals[i % 7] = totals.get(i % 7, 0) + i
        assert reply == totals[i % 7]


def test_script_is_loaded_on_first_use_then_run_by_sha(redis_server: str) -> None:
    script = f"return {{tonumber(ARGV[1]) + 1, KEYS[1]}} -- {uuid.uuid4().hex}"

    async def run() -> tuple[object, object]:
        client = PipelinedRedis.from_url(redis_server, 2.0)
        assert client is not None
        try:
            return await client.eval_script(script, ["k"], [41]), await client.eval_script(script, ["k"], [1])
        finally:
            await client.aclose()
    assert asyncio.run(run()) == ([42, b"k"], [2, b"k"])


def test_error_replies_raise_and_the_connection_stays_usable(redis_server: str) -> None:
    async def run() -> bool:
        client = PipelinedRedis.from_url(redis_server, 2.0)
        assert client is not None
        try:
            with pytest.raises(ResponseError):
                await client.execute("NOT-A-COMMAND")
            return await client.ping()
        finally:
            await client.aclose()
    assert asyncio.run(run()) is True


def test_refused_connection_is_a_redis_error() -> None:
    async def run() -> None:
        client = PipelinedRedis("127.0.0.1", 1, timeout_s=0.05)
        await client.execute("PING")
    with pytest.raises(RedisConnectionError):
        asyncio.run(run())


def test_silent_server_times_out_and_next_command_reconnects() -> None:
    async def run() -> None:
        accepted: list[asyncio.StreamWriter] = []

        async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(writer)  # reads nothing, answers nothing
        server = await asyncio.start_server(swallow, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = PipelinedRedis("127.0.0.1", port, timeout_s=0.05)
        try:
            with pytest.raises(RedisTimeoutError):
                await client.execute("PING")
            with pytest.raises(RedisError):
                await client.execute("PING")
            assert len(accepted) == 2  # the silent connection was dropped, a new one was made
        finally:
            await client.aclose()
            for writer in accepted:
                writer.close()
            server.close()
    asyncio.run(run())


def test_server_closing_fails_every_waiter() -> None:
    async def run() -> list[object]:
        async def close_after_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1)
            writer.close()
        server = await asyncio.start_server(close_after_read, "127.0.0.1", 0)
        client = PipelinedRedis("127.0.0.1", server.sockets[0].getsockname()[1], timeout_s=1.0)
        try:
            replies: list[object] = await asyncio.gather(*(client.execute("PING") for _ in range(5)),
                                                         return_exceptions=True)
            return replies
        finally:
            await client.aclose()
            server.close()
    assert all(isinstance(r, RedisConnectionError) for r in asyncio.run(run()))


def test_each_command_has_its_own_deadline_not_the_oldest_ones(redis_server: str) -> None:
    """Commands spread over several deadlines all succeed: one timer serves them, re-armed per command."""
    async def run() -> list[object]:
        client = PipelinedRedis.from_url(redis_server, 0.2)
        assert client is not None
        try:
            pending = []
            for n in range(8):  # 8 × 60 ms: later commands are sent long after the first one's deadline
                pending.append(asyncio.ensure_future(client.execute("ECHO", n)))
                await asyncio.sleep(0.06)
            replies: list[object] = await asyncio.gather(*pending)
            return replies
        finally:
            await client.aclose()
    assert asyncio.run(run()) == [str(n).encode() for n in range(8)]


def test_a_busy_server_times_out_every_command_and_the_next_one_reconnects() -> None:
    """A server that reads but never answers: each waiter fails within its deadline, none hangs."""
    async def run() -> list[object]:
        async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while await reader.read(65536):
                pass
            writer.close()
        server = await asyncio.start_server(swallow, "127.0.0.1", 0)
        client = PipelinedRedis("127.0.0.1", server.sockets[0].getsockname()[1], timeout_s=0.05)
        try:
            first = await asyncio.wait_for(
                asyncio.gather(*(client.execute("PING") for _ in range(20)), return_exceptions=True), 2)
            second = await asyncio.wait_for(asyncio.gather(client.execute("PING"), return_exceptions=True), 2)
            return [*first, *second]
        finally:
            await client.aclose()
            server.close()
    results = asyncio.run(run())
    assert all(isinstance(r, RedisError) for r in results), results
