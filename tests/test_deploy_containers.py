"""End to end against the real Kafka and Redis images of deploy/compose.yaml (testcontainers).

Runs where a Docker engine answers or can be started here (deploy/local/engine.sh, as root); elsewhere
it is skipped with the reason. Marked `containers` (not in the default run: `pytest -m containers`).
Where no registry is reachable, the images are the local ones of deploy/local/build-images.sh (named
in deploy/local/images.env; Kafka is the tansu stand-in there). The images and
the Kafka (KRaft) and Redis settings are read from deploy/compose.yaml, the Kafka listeners moved
to a host port; Envoy, authz, the issuer, the mock upstream, log_shipper and callback_consumer run
as local processes (the local launcher) with REDIS_URL and KAFKA_BOOTSTRAP pointing at the
containers. One request through Envoy must come back as a signed callback at the tenant backend,
through the real Kafka topic, with its reservation settled in the real Redis.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from conftest import DEMO_TENANT, TenantKeys, free_ports, jwt_payload, write_test_config
from deploy_compose_support import IMAGES_ENV, build_images, engine_problem
from deploy_support import DEPLOY, env_example, interpolate

from dynaseal.config import DynasealConfig, load_config
from dynaseal.ledger import redis_keys

pytestmark = [pytest.mark.integration, pytest.mark.containers, pytest.mark.timeout(3600)]

USAGE_TOPIC = "dynaseal.usage.v1"
COMPOSE_KAFKA = "kafka:9092"
# An engine on the vfs storage driver (deploy/local/engine.sh) copies the whole image to create a
# container: over a minute on a loaded machine, past the Docker client's default 60 s.
SLOW_ENGINE = {"timeout": 600}


def docker_problem() -> str | None:
    """Why no Docker engine can be used here, or None when one answers."""
    try:
        import docker

        client = docker.from_env(timeout=5)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # any failure to reach an engine means: skip, with its reason
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return None


def compose_services() -> dict[str, Any]:
    """deploy/compose.yaml's services as compose sees them with deploy/.env.example (and the local
    images of deploy/local/images.env, when build-images.sh wrote it)."""
    env = env_example()
    if IMAGES_ENV.exists():
        env |= dict(line.split("=", 1) for line in IMAGES_ENV.read_text().splitlines()
                    if line.strip() and not line.startswith("#"))
    return dict(yaml.safe_load(interpolate((DEPLOY / "compose.yaml").read_text(), env))["services"])


@pytest.fixture(scope="module")
def backing_services() -> Iterator[tuple[str, str]]:
    """(REDIS_URL, KAFKA_BOOTSTRAP) of real Redis and Kafka containers, configured as in compose."""
    pytest.importorskip("testcontainers", reason="testcontainers is not installed (the `test` extra)")
    problem = engine_problem() or docker_problem()
    if problem:
        pytest.skip(f"no Docker engine: {problem}")
    if os.geteuid() == 0:
        build_images()  # skips what exists
    elif not IMAGES_ENV.exists():
        pytest.skip("no local images (deploy/local/build-images.sh needs root to make them)")
    # Ryuk (testcontainers' reaper) is an image from a registry; the containers here are removed by
    # their context managers.
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    if not all(importlib.util.find_spec(m) for m in ("log_shipper", "callback_consumer")):
        pytest.skip("the usage pipeline (log_shipper, callback_consumer) is not installed")
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.docker_client import DockerClient
    from testcontainers.core.network import Network
    from testcontainers.core.wait_strategies import ExecWaitStrategy

    services = compose_services()
    host = DockerClient().host()
    [kafka_port] = free_ports(1)
    bootstrap = f"{host}:{kafka_port}"
    # Their own network, as compose gives them: an engine without the default bridge
    # (deploy/local/engine.sh) publishes ports only from user-defined networks.
    network = Network(docker_client_kw=SLOW_ENGINE)  # created on entering its context, below
    kafka = (DockerContainer(services["kafka"]["image"], docker_client_kw=SLOW_ENGINE).with_network(network)
             .with_bind_ports(kafka_port, kafka_port))
    environment = {**services["kafka"]["environment"],
                   "KAFKA_LISTENERS": f"PLAINTEXT://:{kafka_port},CONTROLLER://:9093",
                   "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://{bootstrap}",
                   "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093"}
    for name, value in environment.items():
        kafka.with_env(name, str(value))
    kafka_ready = services["kafka"]["healthcheck"]["test"][1].replace(COMPOSE_KAFKA, f"localhost:{kafka_port}")
    kafka.waiting_for(ExecWaitStrategy(["sh", "-c", kafka_ready]).with_startup_timeout(180))
    redis = (DockerContainer(services["redis"]["image"], docker_client_kw=SLOW_ENGINE).with_network(network)
             .with_command(services["redis"]["command"])
             .with_exposed_ports(6379)
             .waiting_for(ExecWaitStrategy(["sh", "-c", services["redis"]["healthcheck"]["test"][1]])
                          .with_startup_timeout(60)))
    with network, kafka, redis:
        # The compose one-shot job creates the topics, here too.
        create_topics = " ".join(services["kafka-init"]["command"]).replace(COMPOSE_KAFKA, f"localhost:{kafka_port}")
        result = kafka.exec(["sh", "-c", create_topics])
        assert result.exit_code == 0, result.output
        yield f"redis://{redis.get_container_host_ip()}:{redis.get_exposed_port(6379)}/0", bootstrap


@pytest.fixture(scope="module")
def stack_on_containers(backing_services: tuple[str, str], test_keys: TenantKeys, config_path: Path,
                        tmp_path_factory: pytest.TempPathFactory) -> Iterator[DynasealConfig]:
    """The local stack on free ports, without its own Redis and Kafka: it uses the containers."""
    from dynaseal_launcher.stack import LocalStack

    redis_url, bootstrap = backing_services
    path = write_test_config(tmp_path_factory.mktemp("containers"), test_keys)
    saved = {name: os.environ.get(name) for name in ("REDIS_URL", "KAFKA_BOOTSTRAP")}
    os.environ.update(REDIS_URL=redis_url, KAFKA_BOOTSTRAP=bootstrap)
    try:
        cfg = load_config(path)
        stack = LocalStack(cfg, path, pipeline=True)
        started = stack.start()
        try:
            assert not {"redis", "kafka"} & {spec.name for spec in started}
            yield cfg
        finally:
            stack.stop()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _login(backend: httpx.Client, username: str) -> dict[str, str]:
    reply = backend.post("/user/login", data={"username": username, "password": username})
    reply.raise_for_status()
    return {"Authorization": f"Bearer {reply.json()['access_token']}"}


def test_usage_reaches_the_tenant_through_real_kafka_and_redis(stack_on_containers: DynasealConfig,
                                                              backing_services: tuple[str, str]) -> None:
    import redis
    from kafka import KafkaConsumer, TopicPartition

    ports = stack_on_containers.gateway.ports
    redis_url, bootstrap = backing_services
    with httpx.Client(base_url=f"http://127.0.0.1:{ports.issuer}", timeout=10) as backend:
        created = backend.post("/key/create", headers=_login(backend, "client1"))
        created.raise_for_status()
        key = created.json()["token"]
        jti = str(jwt_payload(key)["jti"])
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{ports.envoy}/v1", api_key=key, max_retries=0, timeout=30)
        reply = client.chat.completions.create(model="deepseek-chat", max_tokens=16,
                                               messages=[{"role": "user", "content": "Hello from a container test."}])
        assert reply.usage is not None
        total = reply.usage.total_tokens

        store = redis.Redis.from_url(redis_url)
        assert store.hget(redis_keys.counters(DEMO_TENANT, jti), "uses") == b"1"  # admitted in the Redis container

        tenant = _login(backend, "user1")
        deadline = time.monotonic() + 180  # the first consumer-group join on a fresh broker is slow
        delivered: list[dict[str, Any]] = []
        while not delivered and time.monotonic() < deadline:
            page = backend.get("/usage", headers=tenant)
            page.raise_for_status()
            delivered = [item for item in page.json()["items"] if item["jti"] == jti]
            if not delivered:
                time.sleep(1)
    assert delivered, "no usage callback reached the tenant backend"
    assert delivered[0]["tokens"] == total

    spent_key = redis_keys.counters(DEMO_TENANT, jti)
    while store.hget(spent_key, "spent") != str(total).encode() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert store.hmget(redis_keys.counters(DEMO_TENANT, jti), "spent", "reserved") == [str(total).encode(), b"0"]

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=5000)
    try:
        partitions = [TopicPartition(USAGE_TOPIC, p) for p in consumer.partitions_for_topic(USAGE_TOPIC) or ()]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        assert jti.encode() in {record.key for record in consumer}, "the event is keyed by jti in the real topic"
    finally:
        consumer.close()
