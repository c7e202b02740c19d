"""The authz hot path on a Redis Cluster: one pipelined connection per master, commands routed by slot.

Each command goes to the master that owns its key's slot (CRC16 of the hash tag, the slot map read
with CLUSTER SLOTS), on that master's `PipelinedRedis`: a request still costs one round trip and a
few microseconds of Python. Redirections are followed within the same call: MOVED (the slot has
a new owner: the map is updated and read again) and ASK (the slot is being migrated: ASKING and the
command go to the importing node). A node that fails (connection refused, timeout) fails the
command — the caller fails closed — and the map is read again, at most every REFRESH_EVERY_S, so
once a replica is promoted the next requests go to it.

Measured against redis-py's asyncio RedisCluster in bench/cluster.py (bench/RESULTS.md): the
reason this client exists rather than using redis-py's there.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import AsyncIterator
from typing import Any

from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from dynaseal.ledger.redis_connect import parse_cluster_url
from dynaseal.ledger.redis_pipeline import PipelinedRedis

SLOTS = 16384
# A failing node makes every request that reaches it ask for a new map: read it at most this often.
REFRESH_EVERY_S = 0.1
MAX_REDIRECTS = 3
Address = tuple[str, int]


class PipelinedCluster:
    """A Redis Cluster client for the hot path: per-master pipelined connections, slot routing, redirects."""

    def __init__(self, seeds: list[Address], *, username: str | None = None, password: str | None = None,
                 timeout_s: float = 0.05) -> None:
        self.seeds = list(seeds)
        self.username, self.password = username, password
        self.timeout_s = timeout_s
        self._nodes: dict[Address, PipelinedRedis] = {}
        self._slots: list[Address | None] = [None] * SLOTS
        self._masters: list[Address] = []
        self._refresh: asyncio.Future[None] | None = None
        self._refreshed_at = 0.0
        self._scripts: dict[str, str] = {}
        self._closing: set[asyncio.Future[None]] = set()

    @classmethod
    def from_url(cls, url: str, timeout_s: float) -> PipelinedCluster | None:
        """A client for a plain-TCP `redis+cluster://` URL, else None (TLS stays with redis-py)."""
        cluster = parse_cluster_url(url)
        if cluster is None or cluster.tls:
            return None
        return cls(list(cluster.nodes), username=cluster.username, password=cluster.password, timeout_s=timeout_s)

    @property
    def masters(self) -> list[Address]:
        """The masters of the last slot map read."""
        return list(self._masters)

    def node(self, address: Address) -> PipelinedRedis:
        """The pipelined client of one node (created on first use)."""
        client = self._nodes.get(address)
        if client is None:
            client = self._nodes[address] = PipelinedRedis(address[0], address[1], username=self.username,
                                                           password=self.password, timeout_s=self.timeout_s)
        return client

    # --- the slot map ------------------------------------------------------------------------

    async def _read_map(self) -> None:
        # Known masters first (they answered before), then the seeds; a dead node costs one connect.
        candidates = list(dict.fromkeys([*random.sample(self._masters, len(self._masters)), *self.seeds]))
        errors = []
        for address in candidates:
            try:
                reply = await self.node(address).execute("CLUSTER", "SLOTS")
            except RedisError as exc:
                errors.append(f"{address[0]}:{address[1]}: {exc}")
                continue
            self._apply_map(address, reply)
            return
        raise RedisConnectionError("no Redis Cluster node answered CLUSTER SLOTS: " + "; ".join(errors))

    def _apply_map(self, asked: Address, reply: list[Any]) -> None:
        slots: list[Address | None] = [None] * SLOTS
        masters: dict[Address, None] = {}
        for start, end, master, *_replicas in reply:
            host = master[0].decode() if master[0] else asked[0]  # an empty ip: the node we asked
            address = (host, int(master[1]))
            masters[address] = None
            for slot in range(int(start), int(end) + 1):
                slots[slot] = address
        self._slots, self._masters = slots, list(masters)
        for gone in [a for a in self._nodes if a not in masters and a not in self.seeds]:
            closing = asyncio.ensure_future(self._nodes.pop(gone).aclose())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    async def refresh(self) -> None:
        """Read the slot map now (callers arriving meanwhile share the one read)."""
        if self._refresh is None or self._refresh.done():
            self._refreshed_at = time.monotonic()
            self._refresh = asyncio.ensure_future(self._read_map())
        await asyncio.shield(self._refresh)

    def _refresh_soon(self) -> None:
        if (self._refresh is None or self._refresh.done()) and \
                time.monotonic() - self._refreshed_at >= REFRESH_EVERY_S:
            task = asyncio.ensure_future(self.refresh())
            task.add_done_callback(lambda done: done.cancelled() or done.exception())

    async def _owner(self, slot: int) -> Address:
        address = self._slots[slot]
        if address is None:
            await self.refresh()
            address = self._slots[slot]
            if address is None:
                raise RedisConnectionError(f"no Redis Cluster node serves slot {slot} (cluster down?)")
        return address

    # --- commands ----------------------------------------------------------------------------

    async def execute_on(self, key: str, *args: Any) -> Any:
        """Run one command on the master of `key`'s slot, following MOVED/ASK."""
        slot = key_slot(key.encode())
        address = await self._owner(slot)
        asking = False
        for _ in range(MAX_REDIRECTS):
            client = self.node(address)
            try:
                return await (client.execute_asking(*args) if asking else client.execute(*args))
            except ResponseError as exc:
                message = str(exc)
                kind = message.split(" ", 1)[0]
                if kind not in ("MOVED", "ASK"):
                    if kind in ("CLUSTERDOWN", "TRYAGAIN"):
                        self._refresh_soon()
                    raise
                _, moved_slot, target = message.split(" ")
                host, _, port = target.rpartition(":")
                address, asking = (host or address[0], int(port)), kind == "ASK"
                if kind == "MOVED":  # the slot has a new owner for good; the rest of the map may too
                    self._slots[int(moved_slot)] = address
                    self._refresh_soon()
            except RedisError:
                self._refresh_soon()  # a node down or slow: maybe a failover is under way
                raise
        raise RedisConnectionError(f"more than {MAX_REDIRECTS} cluster redirections for slot {slot}")

    async def eval_script(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA on the keys' master, or EVAL when that node lacks the script (e.g. just promoted)."""
        sha = self._scripts.get(script)
        if sha is None:
            sha = self._scripts[script] = hashlib.sha1(script.encode()).hexdigest()
        try:
            return await self.execute_on(keys[0], "EVALSHA", sha, len(keys), *keys, *args)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self.execute_on(keys[0], "EVAL", script, len(keys), *keys, *args)

    async def on_every_master(self, *args: Any) -> list[Any]:
        """Run one command on every master (the map is read first if unknown); raises if any fails."""
        if not self._masters:
            await self.refresh()
        try:
            return list(await asyncio.gather(*(self.node(a).execute(*args) for a in self._masters)))
        except RedisError:
            self._refresh_soon()
            raise

    async def scan_iter(self, pattern: str) -> AsyncIterator[str]:
        """Every key name matching `pattern`, master by master (the map is read first if unknown)."""
        if not self._masters:
            await self.refresh()
        for address in list(self._masters):
            try:
                async for name in self.node(address).scan_iter(pattern):
                    yield name
            except RedisError:
                self._refresh_soon()
                raise

    async def ping(self) -> bool:
        """Every master answers PING."""
        return all(reply == b"PONG" for reply in await self.on_every_master("PING"))

    async def aclose(self) -> None:
        """Close every connection (a later command reconnects)."""
        for client in list(self._nodes.values()):
            await client.aclose()
