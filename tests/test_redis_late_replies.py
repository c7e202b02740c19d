"""A reply that comes back after its command gave up (its deadline passed, or its caller was cancelled) is never
handed to the next command: on the pipelined connection the replies are matched by order, so the late one must
be dropped with its waiter. Each client `redis_async.connect` gives (pipelined, redis-py's adapter) is checked."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.exceptions import RedisError

from dynaseal.ledger.redis_async import connect

# The slow command: BLPOP on an empty list, answered (nil) by Redis after 1.5 s; the connection's later commands
# wait behind it. Its caller gives up after 1 s (the client's deadline) or 0.9 s (cancelled); a command sent just
# after that is answered once the BLPOP ends, well within its own 1 s.
TIMEOUT_S = 1.0
BLOCK_S = 1.5


@pytest.mark.parametrize("adapter", [False, True], ids=["pipelined", "redis-py"])
@pytest.mark.parametrize("gives_up", ["deadline", "cancelled"])
def test_a_late_reply_never_answers_the_next_command(redis_server: str, adapter: bool, gives_up: str) -> None:
    key = f"late-{uuid.uuid4().hex[:6]}"
    # A URL option sends the URL to redis-py's adapter instead of the pipelined client.
    url = redis_server + "?protocol=2" if adapter else redis_server

    async def run() -> tuple[object, object]:
        client = connect(url, timeout_s=TIMEOUT_S)
        try:
            await client.execute_on(key, "SET", key, "the value")
            # A quick command just before the slow one, answered while the slow one waits: the connection is seen
            # answering, so it is kept (a connection silent past a deadline is dropped, which would hide a mismatch).
            quick = asyncio.ensure_future(client.execute_on(key, "PING"))
            await asyncio.sleep(0)
            slow = client.execute_on(key, "BLPOP", f"{key}:empty", BLOCK_S)
            try:
                if gives_up == "deadline":
                    await slow
                else:
                    await asyncio.wait_for(slow, TIMEOUT_S * 0.9)
                gave_up = False
            except (RedisError, TimeoutError):
                gave_up = True
            assert await quick in (b"PONG", True)
            if not gave_up:
                pytest.fail("the slow command answered within the deadline: nothing was tested")
            # Sent while the BLPOP still blocks: its reply comes after the late one, on the same connection.
            value = await client.execute_on(key, "GET", key)
            after = await client.execute_on(key, "GET", key)
            return value, after
        finally:
            await client.aclose()

    value, after = asyncio.run(run())
    assert value == b"the value"
    assert after == b"the value"
