"""A settlement whose reply comes back after the consumer gave up on it (the script ran; only the answer was late)
is applied once: the consumer's retry finds it settled, and the key is charged the event's tokens once."""

from __future__ import annotations

import asyncio

import pytest
import redis
from conftest import OTHER_TENANT, verified_key
from ledger_sync import counters
from redis.exceptions import TimeoutError as RedisTimeoutError

from callback_consumer.settlement import SettlementBatcher
from dynaseal.config import DynasealConfig
from dynaseal.ledger.outcomes import SettleOutcome
from dynaseal.ledger.quota import RedisQuota
from dynaseal.ledger.redis_pipeline import PipelinedRedis
from dynaseal.policy.quota_refusals import admit_request
from dynaseal.policy.request_policy import CheckedRequest

TIMEOUT_S = 0.5
PAUSE_MS = 10_000  # ended by the test (CLIENT UNPAUSE) once the settlement timed out


def test_a_settlement_answered_after_its_deadline_is_applied_once(redis_server: str, cfg: DynasealConfig) -> None:
    key = verified_key(cfg, "late-settle")
    request = CheckedRequest(model="gpt-4o-mini", stream=False, n=1, max_tokens=50, prompt_bound=0)

    async def run(sync: redis.Redis) -> SettleOutcome:
        quota = RedisQuota.from_url(redis_server, timeout_s=2.0)
        try:
            await admit_request(quota, key, request, "r-late")
        finally:
            await quota.client.aclose()
        client = PipelinedRedis.from_url(redis_server, TIMEOUT_S)
        assert client is not None
        settlements = SettlementBatcher(client)
        try:
            await client.execute("PING")  # connected, and the script cached, before Redis holds writes
            await settlements.settle(OTHER_TENANT, key.jti, "r-other", 0)  # loads SETTLE (a no-op: nothing reserved)
            sync.client_pause(PAUSE_MS, all=False)  # scripts wait; reads are answered
            quick = asyncio.ensure_future(client.execute("PING"))  # answered while the settlement waits
            await asyncio.sleep(0)
            with pytest.raises(RedisTimeoutError):
                await settlements.settle(OTHER_TENANT, key.jti, "r-late", 20)
            await quick
            sync.client_unpause()  # the held script runs now; its reply has no taker
            settled = await settlements.settle(OTHER_TENANT, key.jti, "r-late", 20)  # the consumer's retry
            return settled.outcome
        finally:
            await client.aclose()

    sync = redis.Redis.from_url(redis_server)
    try:
        outcome = asyncio.run(run(sync))
        assert outcome is SettleOutcome.ALREADY_SETTLED  # the first one ran, after its caller had given up
        assert counters(sync, OTHER_TENANT, key.jti) == {"uses": 1, "reserved": 0, "spent": 20}
    finally:
        sync.client_unpause()
        sync.close()
