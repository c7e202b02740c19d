"""A Redis that answers READONLY is a replica now (a failover behind a DNS name or a floating address): the
pipelined client drops that connection, so the next command connects again and reaches whatever master the
name now points at, instead of failing every write on the old connection until the service restarts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis
from conftest import private_redis
from redis.exceptions import ResponseError

from dynaseal.ledger.redis_pipeline import PipelinedRedis


def test_a_readonly_answer_drops_the_connection(tmp_path: Path) -> None:
    with private_redis(tmp_path / "a") as master_url, private_redis(tmp_path / "b") as replica_url:
        replica = redis.Redis.from_url(replica_url)
        master_port = int(master_url.rsplit(":", 1)[1].split("/")[0])

        async def run() -> tuple[int, int, int, object]:
            client = PipelinedRedis.from_url(replica_url, 2.0)
            assert client is not None
            try:
                before = int(await client.execute("CLIENT", "ID"))
                replica.replicaof("127.0.0.1", master_port)  # demoted under the client's open connection
                with pytest.raises(ResponseError, match="READONLY"):  # in a script: wrapped by older Redis
                    await client.eval_script("return redis.call('INCR', KEYS[1])", ["k"], [])
                between = int(await client.execute("CLIENT", "ID"))  # a read: the replica answers it
                with pytest.raises(ResponseError, match=r"^READONLY"):  # a plain command
                    await client.execute("SET", "k", "0")
                replica.replicaof("no", "one")  # what the name points at takes writes again
                after = int(await client.execute("CLIENT", "ID"))
                return before, between, after, await client.execute("INCR", "k")
            finally:
                await client.aclose()

        try:
            before, between, after, counted = asyncio.run(run())
        finally:
            replica.close()
        assert len({before, between, after}) == 3  # a new connection after each READONLY
        assert counted == 1
