"""Two gateways, one Redis Cluster, one broker: limits hold across them and every event is billed once.

Each gateway is a full set on its own ports (mock upstream, authz, Envoy, log shipper, callback
consumer), started by `LocalStack` from its own config; both name the same `redis+cluster://`
URL and Kafka bootstrap, so their consumers form one group of two.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from cluster_support import LocalCluster, start_cluster
from conftest import OTHER_TENANT, TenantKeys, free_ports
from ledger_sync import counters, sync_client, tenant_counters
from pipeline_harness import Receiver, wait_until

from dynaseal.config import load_config
from dynaseal.keys.mint import mint
from dynaseal.ledger.tenant_quota import window_id
from dynaseal.usage import kafka_io
from dynaseal_launcher.processes import ServiceSpec, Supervisor, tcp_open
from dynaseal_launcher.stack import LocalStack, tansu_binary

pytestmark = pytest.mark.integration
PORT_NAMES = ["envoy", "envoy_admin", "issuer", "authz", "mock_upstream", "redis", "kafka", "authz_metrics",
              "consumer_metrics", "shipper_metrics", "admin"]
TENANT_BUDGET = 1_000_000  # not binding here: it makes every admit take both slots


def gateway_config(session_config: Path, directory: Path, redis_url: str, bootstrap: str,
                   callback_url: str, hook_env: str) -> Path:
    """The session config for one gateway set: own ports and data dir, shared Redis Cluster and broker."""
    raw = yaml.safe_load(session_config.read_text())
    raw.pop("local", None)  # every port anew, the laptop stack's in their old spelling under gateway.ports
    raw["gateway"]["ports"] = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES)), strict=True))
    raw["gateway"]["data_dir"] = str(directory / "data")
    raw["gateway"]["redis_url"] = redis_url
    raw["gateway"]["kafka_bootstrap"] = bootstrap
    acme = next(t for t in raw["tenants"] if t["id"] == OTHER_TENANT)
    acme["callback"] = {"url": callback_url, "secret_env": hook_env, "timeout_s": 5}
    acme["limits"]["tenant_budget"] = {"tokens": TENANT_BUDGET, "window": "day"}
    raw["tenants"] = [acme]  # the issuer's demo tenant stays with the session stack
    raw.pop("issuer", None)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "dynaseal.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def gateways(config_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[list[LocalStack], LocalCluster, Receiver]]:
    """A 3-master cluster, one tansu broker, a receiver and two gateway sets."""
    base = tmp_path_factory.mktemp("gateways")
    hook_env = f"DYNASEAL_TEST_GATEWAYS_HOOK_{uuid.uuid4().hex[:8].upper()}"
    os.environ[hook_env] = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    cluster = start_cluster(base / "cluster", masters=3)
    broker = Supervisor(base / "broker", "127.0.0.1")
    stacks: list[LocalStack] = []
    receiver = Receiver(os.environ[hook_env])
    try:
        receiver.__enter__()
        port = free_ports(1)[0]
        bootstrap = f"127.0.0.1:{port}"
        broker.start(ServiceSpec("kafka", [tansu_binary(), "broker", "--listener-url", f"tcp://{bootstrap}",
                                           "--advertised-listener-url", f"tcp://{bootstrap}",
                                           "--storage-engine", "memory://tansu/"],
                                 "", lambda: tcp_open("127.0.0.1", port)))
        kafka_io.wait_for_topics(bootstrap)
        for name in ("gw-a", "gw-b"):
            path = gateway_config(config_path, base / name, cluster.url, bootstrap, receiver.url, hook_env)
            stack = LocalStack(load_config(path), path, pipeline=True)
            stack.start()
            stacks.append(stack)
        yield stacks, cluster, receiver
    finally:
        for stack in stacks:
            stack.stop()
        broker.stop()
        receiver.__exit__()
        cluster.stop()


async def spread(urls: list[str], key: str, per_gateway: int) -> list[tuple[int, int]]:
    """`per_gateway` concurrent requests to each gateway at once: (status, total tokens)."""
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=128)) as client:
        replies = await asyncio.gather(*(client.post(url, headers={"authorization": f"Bearer {key}"}, json=body)
                                         for url in urls for _ in range(per_gateway)))
    return [(r.status_code, r.json()["usage"]["total_tokens"] if r.status_code == 200 else 0) for r in replies]


def test_a_ten_use_key_spread_over_two_gateways_admits_exactly_ten_and_bills_them_once(
        gateways: tuple[list[LocalStack], LocalCluster, Receiver], test_keys: TenantKeys) -> None:
    stacks, cluster, receiver = gateways
    urls = [f"http://127.0.0.1:{s.cfg.gateway.ports.envoy}/v1/chat/completions" for s in stacks]
    jti = f"multi-{uuid.uuid4().hex[:10]}"
    key = mint(test_keys.acme_ed25519, tenant=OTHER_TENANT, jti=jti, models=["gpt-4o-mini"], max_tokens=16,
               ttl=600, uses=10)
    results = asyncio.run(spread(urls, key, 20))
    statuses = [status for status, _ in results]
    assert statuses.count(200) == 10 and statuses.count(429) == 30, statuses
    per_gateway = [statuses[:20].count(200), statuses[20:].count(200)]
    billed = sum(tokens for _, tokens in results)

    client = sync_client(cluster.url)
    try:
        assert counters(client, OTHER_TENANT, jti)["uses"] == 10
        # Both gateways' shippers and the group of both consumers: every admitted request settles once.
        wait_until(lambda: counters(client, OTHER_TENANT, jti) == {"uses": 10, "reserved": 0, "spent": billed},
                   60, "settlement of all ten requests")
        wait_until(lambda: len(receiver.delivered(jti)) == 10, 30, "ten callbacks")
        assert tenant_counters(client, OTHER_TENANT, window_id("day", time.time()))["spent"] >= billed
    finally:
        client.close()
    assert receiver.bad_signatures == 0
    print(f"multi-gateway: admitted per gateway {per_gateway}, billed {billed} tokens")
