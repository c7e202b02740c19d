"""The Redis `dynaseal up` starts keeps revocations and counters across its own restart (SIGTERM, kill -9)."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
import redis
import yaml
from conftest import OTHER_TENANT, free_ports, verified_key
from ledger_sync import counters, revoke

from dynaseal.config import DynasealConfig, load_config
from dynaseal.errors import Refusal
from dynaseal.keys.claims import VerifiedKey
from dynaseal.ledger.quota import RedisQuota
from dynaseal.policy.quota_refusals import admit_request
from dynaseal.policy.request_policy import CheckedRequest
from dynaseal_launcher.processes import ServiceSpec, Supervisor
from dynaseal_launcher.stack import LocalStack

# appendfsync everysec: what was acknowledged is on disk at most this long after.
FSYNC_WINDOW_S = 1.0


def stack_redis_spec(session_config: Path, directory: Path) -> ServiceSpec:
    """The Redis spec exactly as `dynaseal up` builds it, for a config of its own (port, data_dir)."""
    raw = yaml.safe_load(session_config.read_text())
    raw["local"]["redis_port"] = free_ports(1)[0]
    raw["gateway"]["data_dir"] = str(directory / "data")
    raw["gateway"]["redis_url"] = None
    path = directory / "dynaseal.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    stack = LocalStack(load_config(path), path, pipeline=False)
    return next(spec for spec in stack.specs(directory / "envoy.yaml") if spec.name == "redis")


def _admit(url: str, key: VerifiedKey, request_id: str) -> str:
    """One admission through the authz quota code: "ok" or the refusal code."""
    async def run() -> str:
        quota = RedisQuota.from_url(url, timeout_s=2.0)
        try:
            await admit_request(quota, key, CheckedRequest("gpt-4o-mini", False, 1, 20, 5), request_id)
            return "ok"
        except Refusal as refusal:
            return refusal.code.value
        finally:
            await quota.client.aclose()
    return asyncio.run(run())


@pytest.mark.integration
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_revocation_and_spent_uses_survive_a_redis_restart(
        cfg: DynasealConfig, config_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        stop: signal.Signals) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)  # else `dynaseal up` starts no Redis at all
    spec = stack_redis_spec(config_path, tmp_path)
    assert "--appendonly" in spec.argv and spec.argv[list(spec.argv).index("--appendonly") + 1] == "yes"
    redis_dir = Path(spec.argv[list(spec.argv).index("--dir") + 1])
    assert redis_dir == (tmp_path / "data" / "redis").resolve()

    once = verified_key(cfg, "once", max_tokens=20, uses=1)
    revoked = replace(once, jti=f"revoked-{uuid.uuid4().hex}", uses=None)

    supervisor = Supervisor(tmp_path / "logs", cfg.gateway.host)
    try:
        supervisor.start(spec)
        url = spec.address
        assert _admit(url, once, "r-1") == "ok"
        assert _admit(url, once, "r-2") == "key_exhausted"
        assert _admit(url, revoked, "r-3") == "ok"
        client = redis.Redis.from_url(url)
        revoke(client, OTHER_TENANT, revoked.jti, revoked.exp)
        client.close()
        assert _admit(url, revoked, "r-4") == "revoked_key"
        before = counters(redis.Redis.from_url(url), OTHER_TENANT, once.jti)
        if stop is signal.SIGKILL:
            time.sleep(2 * FSYNC_WINDOW_S)  # past the fsync window: a crash of the machine would keep it too
        supervisor.stop_service("redis", stop)

        supervisor.start(spec)  # the same arguments, the same directory
        assert counters(redis.Redis.from_url(url), OTHER_TENANT, once.jti) == before == {"uses": 1, "reserved": 25}
        assert _admit(url, once, "r-5") == "key_exhausted"
        assert _admit(url, revoked, "r-6") == "revoked_key"
        assert any(redis_dir.rglob("*.aof")), "the append-only file lives in data_dir/redis"
    finally:
        supervisor.stop()
