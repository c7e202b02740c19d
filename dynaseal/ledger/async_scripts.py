"""Lua scripts run from asyncio on the core's pipelined Redis clients, for the services beside authz.

`redis://` URLs get `PipelinedRedis` (one connection; commands issued in the same event-loop turn
go out in one write), `redis+cluster://` its cluster form (one connection per master, each script on
its keys' node); other URLs (TLS, unix sockets, URL options) redis-py's asyncio client. A caller
awaits scripts from its own loop: no thread, no executor hop, no blocking twin of the call.
"""

from __future__ import annotations

from typing import Any

from dynaseal.ledger.redis_cluster import PipelinedCluster
from dynaseal.ledger.redis_connect import AsyncClient, async_client
from dynaseal.ledger.redis_pipeline import PipelinedRedis


class AsyncScripts:
    """Runs (script, keys, args) on the Redis a URL names; raises redis-py's RedisError subclasses."""

    def __init__(self, client: PipelinedRedis | PipelinedCluster | AsyncClient) -> None:
        self.client = client
        self._registered: dict[str, Any] = {}

    @classmethod
    def from_url(cls, url: str, timeout_s: float) -> AsyncScripts:
        """A runner whose every command fails after `timeout_s` rather than wait on a stalled Redis."""
        pipelined = PipelinedRedis.from_url(url, timeout_s) or PipelinedCluster.from_url(url, timeout_s)
        return cls(pipelined if pipelined is not None else async_client(url, timeout_s))

    async def run(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """One script (EVALSHA, EVAL when the node does not know it yet) on the node of its keys' slot."""
        if isinstance(self.client, PipelinedRedis | PipelinedCluster):
            return await self.client.eval_script(script, keys, args)
        registered = self._registered.get(script)
        if registered is None:
            registered = self._registered[script] = self.client.register_script(script)
        return await registered(keys=keys, args=args)

    async def command_on(self, key: str, *args: Any) -> Any:
        """One command (`args`) that touches `key` only, on the node of that key's slot."""
        if isinstance(self.client, PipelinedCluster):
            return await self.client.execute_on(key, *args)
        if isinstance(self.client, PipelinedRedis):
            return await self.client.execute(*args)
        return await self.client.execute_command(*args)

    async def aclose(self) -> None:
        """Close the connections (from the loop that used them)."""
        await self.client.aclose()
