"""The ledger in blocking form, for tests that settle, read or revoke by hand: the services await it on a loop.

`settle` runs the same scripts with the same arguments as `callback_consumer.settlement` (the
tenant's slot, then every level of the key's chain), so a test that settles here exercises the
ledger the consumer uses; `run_scripts` sends them in one redis-py pipeline, EVAL where a node
answers NOSCRIPT. `sync_client` is redis-py's blocking client for a URL (a cluster's too), which
only tests and the launcher's local set-up hold; `revoke` runs the core's one revocation on it.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from redis import Redis, RedisCluster
from redis.cluster import ClusterNode
from redis.exceptions import NoScriptError, ResponseError

from dynaseal.config import MAX_LEEWAY_S
from dynaseal.ledger import redis_keys, revocation, tenant_quota
from dynaseal.ledger.quota import MoneySettlement, Settlement, key_path, settlement_call
from dynaseal.ledger.quota_scripts import MARK_THRESHOLDS
from dynaseal.ledger.redis_connect import parse_cluster_url
from dynaseal.ledger.tenant_scripts import TENANT_SETTLE
from dynaseal.money.budget_thresholds import Crossing

Call = tuple[str, Sequence[str], Sequence[Any]]
SyncClient = Redis | RedisCluster


def sync_client(url: str, timeout_s: float = 2.0) -> SyncClient:
    """A blocking client: RedisCluster for a cluster URL, else redis-py's Redis.from_url."""
    cluster = parse_cluster_url(url)
    if cluster is None:
        return Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in cluster.nodes], username=cluster.username,
                        password=cluster.password, ssl=cluster.tls, socket_timeout=timeout_s,
                        socket_connect_timeout=timeout_s)


def run_scripts(client: SyncClient, calls: Sequence[Call]) -> list[Any]:
    """Run Lua scripts, each (script, keys, args), in one pipeline, on a server or a cluster.

    EVALSHA first; the calls a node answers NOSCRIPT (a replica just promoted has an empty script
    cache) run again with EVAL. Any other error is raised, after the whole pipeline ran.
    """
    replies = _pipeline(client, [("EVALSHA", hashlib.sha1(script.encode()).hexdigest(), keys, args)
                                 for script, keys, args in calls])
    missing = [i for i, reply in enumerate(replies) if isinstance(reply, ResponseError)
               and (isinstance(reply, NoScriptError) or str(reply).startswith("NOSCRIPT"))]
    if missing:
        again = _pipeline(client, [("EVAL", *calls[i]) for i in missing])
        for i, reply in zip(missing, again, strict=True):
            replies[i] = reply
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def _pipeline(client: SyncClient, commands: list[tuple[str, str, Sequence[str], Sequence[Any]]]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for verb, body, keys, args in commands:
        pipe.execute_command(verb, body, len(keys), *keys, *args)
    return list(pipe.execute(raise_on_error=False))


def settle(client: SyncClient, tenant: str, jti: str, request_id: str, actual_tokens: int,
           key_exp: float | None = None, chain: tuple[str, ...] = (),
           money: MoneySettlement | None = None, now_ms: int | None = None) -> Settlement:
    """Replace a request's reservation with its real usage (and cost), at every level of its key's chain and
    on the tenant; idempotent per request id."""
    script, keys, args = settlement_call(tenant, jti, request_id, actual_tokens, chain, key_exp, money, now_ms)
    _, reply = run_scripts(client, [
        (TENANT_SETTLE, tenant_quota.tenant_keys(tenant),
         tenant_quota.settle_args(request_id, actual_tokens, now_ms)),
        (script, keys, args)])
    return Settlement.from_reply(reply)


def mark_thresholds(client: SyncClient, tenant: str, jti: str, crossings: tuple[Crossing, ...],
                    chain: tuple[str, ...] = ()) -> None:
    """Record that these thresholds' callbacks were delivered (or dead-lettered): never reported again."""
    if crossings:
        counters_key = redis_keys.level_keys(tenant, key_path(jti, chain))[1]
        client.register_script(MARK_THRESHOLDS)(keys=[counters_key], args=[c.field for c in crossings])


def tenant_counters(client: SyncClient, tenant: str, window: str) -> dict[str, int]:
    """A tenant's budget counters (reserved, spent) of one window id."""
    reserved, spent = client.hmget(redis_keys.tenant_budget(tenant), [f"r:{window}", f"s:{window}"])
    return {"reserved": int(reserved or 0), "spent": int(spent or 0)}


def counters(client: SyncClient, tenant: str, jti: str, chain: tuple[str, ...] = ()) -> dict[str, int]:
    """A key's counters (uses, reserved, spent; reserved_cost, spent_cost, thr:*)."""
    raw = client.hgetall(redis_keys.level_keys(tenant, key_path(jti, chain))[1])
    return {k.decode(): int(v) for k, v in raw.items()}  # type: ignore[union-attr]


class _Blocking:
    """The core's `AsyncLedgerRedis` over a blocking client, for one awaited call in a test's `asyncio.run`."""

    def __init__(self, client: SyncClient) -> None:
        self.client = client

    async def eval_script(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """The script, by EVAL."""
        return self.client.eval(script, len(keys), *keys, *args)

    async def execute_on(self, key: str, *args: Any) -> Any:
        """One command (redis-py's cluster client routes it by its key)."""
        return self.client.execute_command(*args)

    async def scan_iter(self, pattern: str) -> AsyncIterator[str]:
        """SCAN (every node of a cluster)."""
        for name in self.client.scan_iter(match=pattern):
            yield name.decode()

    async def on_every_master(self, *args: Any) -> list[Any]:
        """Not needed by the calls tests make here."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """The test closes its own client."""


def revoke(client: SyncClient, tenant: str, jti: str, exp: float, ancestors: tuple[str, ...] = (), *,
           leeway_s: int = MAX_LEEWAY_S) -> None:
    """The core's revocation (`dynaseal.ledger.revocation.revoke`), run to completion on a blocking client."""
    asyncio.run(revocation.revoke(_Blocking(client), tenant, jti, exp, ancestors, leeway_s=leeway_s))
