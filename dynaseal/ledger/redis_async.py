"""The services' one way to an asyncio Redis: `connect(url, timeout_s)`, whatever the URL names.

Plain `redis://` URLs get the pipelined client (`redis_pipeline.PipelinedRedis`: one connection,
the commands of one event-loop turn in one write), plain `redis+cluster://` URLs its cluster form
(`redis_cluster.PipelinedCluster`: one such connection per master, each command on its key's node);
other URLs (TLS, unix sockets, URL options) an adapter over redis-py's asyncio client, with a
blocking pool so a burst waits (bounded) for a connection instead of failing at once. All three
answer the same small protocol (`AsyncLedgerRedis`) and raise redis-py's `RedisError` subclasses
(a timeout or a lost connection included), so callers retry or fail closed alike. authz's ledger
and the callback consumer both come through here; only their deadlines differ (`timeout_s`).

A client belongs to the event loop that first used it: a service with two loops makes two.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Protocol

from redis.asyncio import BlockingConnectionPool
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio import RedisCluster as AsyncRedisCluster
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode

from dynaseal.ledger.redis_cluster import PipelinedCluster
from dynaseal.ledger.redis_connect import parse_cluster_url
from dynaseal.ledger.redis_pipeline import PipelinedRedis

SCAN_COUNT = 1000
AsyncClient = AsyncRedis | AsyncRedisCluster


class AsyncLedgerRedis(Protocol):
    """What the services need of Redis: scripts, single-key commands, a key scan, a command on every master,
    closing."""

    async def eval_script(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """Run a Lua script (EVALSHA, EVAL when the node lacks it) on the node of its keys' slot."""

    async def execute_on(self, key: str, *args: Any) -> Any:
        """Run one command that touches `key` only, on the node of that key's slot."""

    def scan_iter(self, pattern: str) -> AsyncIterator[str]:
        """Every key name matching `pattern` (on every master of a cluster), in SCAN's order."""

    async def on_every_master(self, *args: Any) -> list[Any]:
        """Run one command on the server, or on every master of a cluster: their replies."""

    async def aclose(self) -> None:
        """Close the connections (a later command reconnects)."""


class RedisPyAsync:
    """`AsyncLedgerRedis` over redis-py's asyncio Redis or RedisCluster (TLS, unix sockets, URL options)."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self._registered: dict[str, Any] = {}

    async def eval_script(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """redis-py's Script: EVALSHA, and on NOSCRIPT it loads the script and runs it again."""
        registered = self._registered.get(script)
        if registered is None:
            registered = self._registered[script] = self.client.register_script(script)
        return await registered(keys=keys, args=args)

    async def execute_on(self, key: str, *args: Any) -> Any:
        """One command; redis-py's cluster client finds the key's node from the command itself."""
        return await self.client.execute_command(*args)

    async def scan_iter(self, pattern: str) -> AsyncIterator[str]:
        """SCAN (every node of a cluster: redis-py's scan_iter does that)."""
        async for name in self.client.scan_iter(match=pattern, count=SCAN_COUNT):
            yield name.decode() if isinstance(name, bytes) else str(name)

    async def on_every_master(self, *args: Any) -> list[Any]:
        """One command on the server, or on each primary of a cluster (one reply per node, not merged)."""
        if isinstance(self.client, AsyncRedisCluster):
            if not self.client.get_primaries():
                await self.client.initialize()
            return list(await asyncio.gather(*(self.client.execute_command(*args, target_nodes=node)
                                               for node in self.client.get_primaries())))
        return [await self.client.execute_command(*args)]

    async def aclose(self) -> None:
        """Close the connections (a pool handed to redis-py's Redis is not closed with it unless asked)."""
        if isinstance(self.client, AsyncRedis):
            await self.client.aclose(close_connection_pool=True)
        else:
            await self.client.aclose()


def connect(url: str, timeout_s: float, max_connections: int = 64) -> PipelinedRedis | PipelinedCluster | RedisPyAsync:
    """The asyncio client for `url`; every command fails with a RedisError after `timeout_s`.

    `max_connections` bounds redis-py's pool (the pipelined clients hold one connection per node).
    """
    pipelined = PipelinedRedis.from_url(url, timeout_s) or PipelinedCluster.from_url(url, timeout_s)
    if pipelined is not None:
        return pipelined
    return redis_py(url, timeout_s, max_connections)


def redis_py(url: str, timeout_s: float, max_connections: int = 64) -> RedisPyAsync:
    """redis-py's asyncio client for `url`, whatever it names: RedisCluster for a cluster URL, else Redis over
    a blocking pool, so a burst waits (bounded) for a connection instead of failing at once.

    `connect` uses it where the pipelined clients cannot go; benchmarks use it to compare the two.
    """
    cluster = parse_cluster_url(url)
    if cluster is not None:
        return RedisPyAsync(AsyncRedisCluster(
            startup_nodes=[AsyncClusterNode(h, p) for h, p in cluster.nodes], username=cluster.username,
            password=cluster.password, ssl=cluster.tls, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
            max_connections=max_connections))
    pool = BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=max(timeout_s, 0.1),
                                           socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    return RedisPyAsync(AsyncRedis(connection_pool=pool))
