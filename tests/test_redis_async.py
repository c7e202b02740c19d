"""The services' one asyncio Redis entry point: which client a URL gets, and how it fails and recovers."""

from __future__ import annotations

import asyncio
import socket
import uuid
from pathlib import Path

import pytest
import redis
from conftest import private_redis
from redis.exceptions import RedisError

from bench.pipeline_bench import PipelineRig
from dynaseal.ledger.quota import RedisQuota
from dynaseal.ledger.redis_async import AsyncLedgerRedis, RedisPyAsync, connect
from dynaseal.ledger.redis_cluster import PipelinedCluster
from dynaseal.ledger.redis_pipeline import PipelinedRedis


@pytest.mark.parametrize(("url", "kind"), [
    ("redis://127.0.0.1:6379/0", PipelinedRedis),
    ("redis://:secret@127.0.0.1:6379/2", PipelinedRedis),
    ("redis+cluster://127.0.0.1:7000,127.0.0.1:7001", PipelinedCluster),
    ("rediss://127.0.0.1:6379/0", RedisPyAsync),  # TLS: redis-py
    ("rediss+cluster://127.0.0.1:7000", RedisPyAsync),
    ("unix:///tmp/redis.sock", RedisPyAsync),
    ("redis://127.0.0.1:6379/0?health_check_interval=0", RedisPyAsync),  # URL options: redis-py
])
def test_each_url_gets_its_client_and_authz_gets_the_same_one(url: str, kind: type) -> None:
    assert isinstance(connect(url, timeout_s=2.0), kind)
    assert isinstance(RedisQuota.from_url(url).client, kind)  # authz and the consumer share the factory
    assert RedisQuota.from_url(url).timeout_ms == 50  # authz's own deadline is unchanged


def test_a_redis_that_never_answers_fails_with_a_redis_error_within_the_deadline() -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts (the kernel does), never answers
    port = silent.getsockname()[1]

    async def run(client: AsyncLedgerRedis) -> None:
        try:
            with pytest.raises(RedisError):
                await asyncio.wait_for(client.execute_on("k", "GET", "k"), 5)  # the outer bound only catches a hang
        finally:
            await client.aclose()
    try:
        asyncio.run(run(connect(f"redis://127.0.0.1:{port}/0", timeout_s=0.2)))
        asyncio.run(run(connect(f"redis://127.0.0.1:{port}/0?health_check_interval=0", timeout_s=0.2)))
    finally:
        silent.close()


def test_a_refused_connection_is_a_redis_error() -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()

    async def run() -> None:
        client = connect(f"redis://127.0.0.1:{port}/0", timeout_s=0.5)
        try:
            with pytest.raises(RedisError):
                await client.eval_script("return 1", ["k"], [])
        finally:
            await client.aclose()
    asyncio.run(run())


@pytest.mark.parametrize("query", ["", "?health_check_interval=0"])
def test_scripts_commands_and_scans_on_a_real_redis_and_a_killed_connection_is_replaced(
        tmp_path: Path, query: str) -> None:
    with private_redis(tmp_path) as url:  # its own: every other connection to it gets killed
        _exercise(url, query)


def _exercise(redis_server: str, query: str) -> None:
    prefix = f"async-{uuid.uuid4().hex[:8]}"
    names = {f"{prefix}:{i}" for i in range(25)}
    sync = redis.Redis.from_url(redis_server)

    async def run() -> None:
        client = connect(redis_server + query, timeout_s=2.0)
        try:
            for name in names:
                await client.execute_on(name, "SET", name, 1)
            assert await client.eval_script("return redis.call('GET', KEYS[1])", [f"{prefix}:3"], []) == b"1"
            assert {n async for n in client.scan_iter(f"{prefix}:*")} == names
            sync.client_kill_filter(_type="normal", skipme=True)  # every connection but this one
            # The next command may fail on the dead connection (a RedisError: callers retry); one after that
            # runs on a new one.
            with_error = 0
            for _ in range(3):
                try:
                    assert await client.execute_on(f"{prefix}:1", "GET", f"{prefix}:1") == b"1"
                    break
                except RedisError:
                    with_error += 1
            assert with_error < 3
            sync.script_flush()  # a restarted Redis has no scripts: EVALSHA's NOSCRIPT is answered with EVAL
            assert await client.eval_script("return redis.call('GET', KEYS[1])", [f"{prefix}:3"], []) == b"1"
        finally:
            await client.aclose()
    try:
        asyncio.run(run())
    finally:
        sync.delete(*names)
        sync.close()


def test_the_bench_can_run_the_consumer_on_redis_py(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BENCH_TENANT_SECRET", "BENCH_WEBHOOK_SECRET"):
        monkeypatch.setenv(name, "")
    rig = PipelineRig(tmp_path, redis_query="health_check_interval=0")
    assert "?health_check_interval=0" in rig.config.read_text()
    (tmp_path / "plain").mkdir()
    assert "redis_url" not in PipelineRig(tmp_path / "plain").config.read_text()
