"""Closing the pipelined client while a command waits for its connection leaves no connection open: the
connection that arrives after the close is closed at once and the waiting command fails as on a closed client
(a RedisError), instead of a socket outliving the client (the consumer closes its client at shutdown, and the
cluster client closes the nodes that left the slot map)."""

from __future__ import annotations

import asyncio

import pytest
import redis
from redis.exceptions import RedisError

from dynaseal.ledger.redis_pipeline import PipelinedRedis


def _clients_named(sync: redis.Redis, name: str) -> int:
    return sum(1 for client in sync.client_list() if client.get("name") == name)


def test_a_connection_that_arrives_after_the_close_is_closed(redis_server: str) -> None:
    name = "closed-while-connecting"

    async def run() -> None:
        client = PipelinedRedis.from_url(redis_server, 2.0)
        assert client is not None
        waiting = asyncio.ensure_future(client.execute("CLIENT", "SETNAME", name))
        await asyncio.sleep(0)  # the connect is under way
        await client.aclose()
        with pytest.raises(RedisError):
            await waiting
        for _ in range(3):  # the loop turns in which a late connection would still be writing
            await asyncio.sleep(0.05)

    sync = redis.Redis.from_url(redis_server)
    try:
        asyncio.run(run())
        assert _clients_named(sync, name) == 0
        assert sync.ping()
    finally:
        sync.close()


def test_a_command_after_the_close_reconnects(redis_server: str) -> None:
    async def run() -> object:
        client = PipelinedRedis.from_url(redis_server, 2.0)
        assert client is not None
        await client.execute("PING")
        await client.aclose()
        try:
            return await client.execute("PING")
        finally:
            await client.aclose()

    assert asyncio.run(run()) == b"PONG"
