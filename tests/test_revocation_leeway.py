"""A revocation marker outlives its key by the configured clock leeway (gateway.leeway_s), not a constant."""

from __future__ import annotations

import time
from typing import Any

from conftest import OTHER_TENANT
from ledger_sync import revoke

from dynaseal.config import MAX_LEEWAY_S
from dynaseal.ledger.revocation import marker


def test_the_marker_lives_exp_plus_the_configured_leeway(sync_redis: Any) -> None:
    exp = time.time() + 100
    revoke(sync_redis, OTHER_TENANT, "leeway-5", exp, leeway_s=5)
    assert 100 <= sync_redis.ttl(marker(OTHER_TENANT, "leeway-5")) <= 105
    revoke(sync_redis, OTHER_TENANT, "leeway-default", exp)  # no config at hand: the largest leeway any allows
    assert 100 + MAX_LEEWAY_S - 5 <= sync_redis.ttl(marker(OTHER_TENANT, "leeway-default")) <= 100 + MAX_LEEWAY_S
