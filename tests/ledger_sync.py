"""The ledger's settlement in blocking form, for tests that settle by hand: the consumer awaits it on its loop.

`settle` runs the same scripts with the same arguments as `callback_consumer.settlement` (the
tenant's slot, then every level of the key's chain), so a test that settles here exercises the
ledger the consumer uses; `run_scripts` sends them in one redis-py pipeline, EVAL where a node
answers NOSCRIPT.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from redis.exceptions import NoScriptError, ResponseError

from dynaseal.ledger import redis_keys, tenant_quota
from dynaseal.ledger.quota import MoneySettlement, Settlement, key_path, settlement_call
from dynaseal.ledger.quota_scripts import MARK_THRESHOLDS
from dynaseal.ledger.redis_connect import SyncClient
from dynaseal.ledger.tenant_scripts import TENANT_SETTLE
from dynaseal.money.budget_thresholds import Crossing

Call = tuple[str, Sequence[str], Sequence[Any]]


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
