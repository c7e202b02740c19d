"""The cases of `bench.hand_written_ab` that need a server: Redis for the admission, an HTTP receiver for the POSTs.

Each server runs in its own process, so the CPU measured (`time.process_time`) is the client's alone.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import uvloop

from bench.authz_stages import median_async_us
from bench.fixture import PROVIDER_KEY, PROVIDER_KEY_ENV, make_keys, write_config
from bench.hand_written_ab import HAND_WRITTEN_REV, Case, Measure, Variant, interleave, module_at
from bench.harness import HOST, free_ports


def _start_redis() -> tuple[subprocess.Popen[bytes], int]:
    from dynaseal_launcher.probes import redis_ping
    from dynaseal_launcher.stack import redis_server_binary

    port = free_ports(1)[0]
    redis = subprocess.Popen([redis_server_binary(), "--port", str(port), "--bind", HOST, "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        if redis_ping(HOST, port):
            return redis, port
        time.sleep(0.05)
    redis.kill()
    raise RuntimeError("redis-server did not answer")


def redis_admit_case(rounds: int, ops: int) -> Case:
    """authz's decision with the Redis admission, on each client, against one real Redis."""
    from authz_service.envoy_adapter import to_auth_request
    from bench.check_client import check_request
    from dynaseal.config import load_config
    from dynaseal.keys.tenants import build_registry
    from dynaseal.ledger.quota import RedisQuota
    from dynaseal.ledger.redis_async import redis_py
    from dynaseal.policy.authorizer import Authorizer

    os.environ.setdefault(PROVIDER_KEY_ENV, PROVIDER_KEY)
    redis, port = _start_redis()
    loop = uvloop.new_event_loop()
    try:
        keys = make_keys()
        with tempfile.TemporaryDirectory() as tmp:
            registry = build_registry(load_config(write_config(Path(tmp), {"redis": port}, keys)))
        url = f"redis://{HOST}:{port}/0"
        pipelined = Authorizer(registry, quota=RedisQuota.from_url(url, 0.5))
        # What RedisQuota.from_url gives a URL the pipelined client does not take (TLS, unix sockets).
        redis_py_quota = RedisQuota(redis_py(url, 0.5, max_connections=64), timeout_s=0.5)
        redis_py_authorizer = Authorizer(registry, quota=redis_py_quota)
        request = to_auth_request(check_request(keys.token))
        for authorizer in (pipelined, redis_py_authorizer):
            decision = loop.run_until_complete(authorizer.decide(request))
            assert decision.allowed, decision

        def decide(authorizer: Authorizer) -> Callable[[], Awaitable[Any]]:
            return lambda: authorizer.decide(request)

        variants = [
            Variant("pipelined client, 1 at a time", lambda: median_async_us(loop, decide(pipelined), ops, 1)),
            Variant("redis-py asyncio, 1 at a time",
                    lambda: median_async_us(loop, decide(redis_py_authorizer), ops, 1)),
            Variant("pipelined client, 16 at a time", lambda: median_async_us(loop, decide(pipelined), ops, 1, 16), 2),
            Variant("redis-py asyncio, 16 at a time",
                    lambda: median_async_us(loop, decide(redis_py_authorizer), ops, 1, 16), 2),
        ]
        interleave(variants, rounds)
        loop.run_until_complete(redis_py_quota.client.aclose())
        return Case("Redis admission: authz's decision + one admit script (`dynaseal/ledger/redis_pipeline.py`)",
                    variants)
    finally:
        loop.close()
        redis.terminate()
        redis.wait(timeout=10)


def _start_receiver() -> tuple[subprocess.Popen[str], str]:
    port = free_ports(1)[0]
    receiver = subprocess.Popen([sys.executable, "-m", "bench.post_receiver", str(port)], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL,
                                text=True, cwd=Path(__file__).resolve().parent.parent)
    assert receiver.stdout is not None
    if receiver.stdout.readline().strip() != "ready":
        receiver.kill()
        raise RuntimeError("bench.post_receiver did not start")
    return receiver, f"http://{HOST}:{port}/v1/callback/usage"


# A usage callback's size and headers as the consumer sends them (the signature is not checked here).
CALLBACK_BODY = orjson.dumps({"type": "usage", "event_id": "ev-1", "content": "", "tokens": 57,
                              "usage": {"prompt_tokens": 12, "completion_tokens": 45, "total_tokens": 57},
                              "model": "gpt-4o-mini", "key_id": "bench-key-0001", "sub": "bench-user-0000000001",
                              "request_id": "0b8e3f0c-4f51-4c3e-9d55-2f1f3a0c9a11", "status": 200,
                              "started_at": "2026-12-06T20:00:00.000Z", "cb": {}})
CALLBACK_HEADERS = {"content-type": "application/json", "webhook-id": "0b8e3f0c-4f51-4c3e-9d55-2f1f3a0c9a11",
                    "webhook-timestamp": "1796000000",
                    "webhook-signature": "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4="}
Post = Callable[[], Awaitable[int]]


def _clients(loop: asyncio.AbstractEventLoop, url: str) -> tuple[list[tuple[str, Post]], Callable[[], None]]:
    """(name, one POST returning its status) per client, and how to close them all."""
    import aiohttp
    import httpx

    from callback_consumer.http_client import CallbackClient

    ours = CallbackClient(url, max_idle=16)
    # The asyncio streams + h11 client the consumer used before aiohttp.
    hand_written = module_at(HAND_WRITTEN_REV, "callback_consumer/http_client.py").CallbackClient(url, max_idle=16)
    httpx_client = httpx.AsyncClient(limits=httpx.Limits(max_connections=16, max_keepalive_connections=16),
                                     timeout=5.0)

    async def open_session() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16),
                                     timeout=aiohttp.ClientTimeout(total=5.0))

    session = loop.run_until_complete(open_session())

    async def post_ours() -> int:
        return (await ours.post(CALLBACK_BODY, CALLBACK_HEADERS, 5.0)).status

    async def post_hand_written() -> int:
        return int((await hand_written.post(CALLBACK_BODY, CALLBACK_HEADERS, 5.0)).status)

    async def post_httpx() -> int:
        return (await httpx_client.post(url, content=CALLBACK_BODY, headers=CALLBACK_HEADERS)).status_code

    async def post_aiohttp() -> int:
        async with session.post(url, data=CALLBACK_BODY, headers=CALLBACK_HEADERS) as reply:
            await reply.read()
            return reply.status

    def close() -> None:
        loop.run_until_complete(ours.aclose())
        hand_written.close()
        loop.run_until_complete(httpx_client.aclose())
        loop.run_until_complete(session.close())

    return [("dynaseal `CallbackClient`", post_ours), ("httpx `AsyncClient`", post_httpx),
            ("aiohttp `ClientSession`", post_aiohttp),
            (f"the hand-written asyncio + h11 client (`{HAND_WRITTEN_REV}`)", post_hand_written)], close


def _checked(post: Post) -> Callable[[], Awaitable[None]]:
    """One POST that must be answered 200 (a failing client cannot pass for a fast one)."""
    async def one() -> None:
        if (status := await post()) != 200:
            raise RuntimeError(f"the receiver answered {status}")
    return one


def callback_post_case(rounds: int, ops: int) -> Case:
    """The consumer's callback POST on each client, keep-alive, against a receiver in its own process."""
    receiver, url = _start_receiver()
    loop = uvloop.new_event_loop()
    close: Callable[[], None] = lambda: None  # noqa: E731 - replaced once the clients are open
    try:
        clients, close = _clients(loop, url)
        for _, post in clients:
            loop.run_until_complete(_checked(post)())

        def batch(post: Post, concurrent: int) -> Measure:
            return lambda: median_async_us(loop, _checked(post), ops, 1, concurrent)

        variants = [Variant(f"{name}, 1 at a time", batch(post, 1)) for name, post in clients]
        variants += [Variant(f"{name}, 16 at a time", batch(post, 16), len(clients)) for name, post in clients]
        interleave(variants, rounds)
        return Case(f"callback POST: {len(CALLBACK_BODY)}-byte body, 200 reply, keep-alive "
                    "(`callback_consumer/http_client.py`)", variants)
    finally:
        try:
            close()
            loop.close()
        finally:
            receiver.kill()
            receiver.wait(timeout=10)
