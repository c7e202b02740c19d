"""Shared fixtures: one real local stack per test session (per xdist worker), on free ports."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from dynaseal.config import DynasealConfig, bundled_dev_config, config_environment, load_config  # noqa: E402
from dynaseal.keys.claims import VerifiedKey  # noqa: E402
from dynaseal.keys.mint import SigningKey  # noqa: E402
from dynaseal.keys.tenants import Registry, Tenant, build_registry  # noqa: E402
from dynaseal.policy.authorizer import Authorizer  # noqa: E402

DEMO_TENANT = "671249a93f1cf2f8bf9b2b82"
DEMO_SECRET = "4d72c063-881f-45fa-85ab-3375c84f5dd7"
OTHER_TENANT = "acme"
OTHER_SECRET = "acme-shared-secret-for-tests-0123456789"
PROVIDER_KEY = "sk-mock-provider-test-key"
# A tenant with only a tenant-wide budget (5,000 tokens a day) and no media_part_tokens: its keys carry
# no budget of their own, as the issuer's default keys do.
TENANT_BUDGET_TENANT = "acme-tenant-budget"


def free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on loopback."""
    socks, ports = [], []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


@dataclass
class TenantKeys:
    """Signing keys the tests hold for the second tenant (an offline-minting backend)."""

    acme_ed25519: SigningKey
    acme_rotated: SigningKey


AUTHZ_SERVERS = ("native", "grpcio")


def authz_server_kind() -> str | None:
    """The authz transport the suite runs on: `$DYNASEAL_AUTHZ_SERVER`, else the config default."""
    kind = os.environ.get("DYNASEAL_AUTHZ_SERVER") or None
    if kind is not None and kind not in AUTHZ_SERVERS:
        raise ValueError(f"DYNASEAL_AUTHZ_SERVER must be one of {AUTHZ_SERVERS}, got {kind!r}")
    return kind


def write_test_config(directory: Path, keys: TenantKeys, authz_server: str | None = None) -> Path:
    """A config like the bundled dev one, on free ports, with a second tenant for isolation tests.

    `authz_server` (else `$DYNASEAL_AUTHZ_SERVER`) picks authz's gRPC transport.
    """
    raw = yaml.safe_load(bundled_dev_config().read_text())
    if kind := authz_server or authz_server_kind():
        raw["authz"] = {"server": kind}
    names = ["envoy", "envoy_admin", "issuer", "authz", "authz_metrics", "consumer_metrics", "shipper_metrics", "admin"]
    local = ["mock_upstream_port", "redis_port", "kafka_port"]
    raw["env_file"] = str(bundled_dev_config().parent / "dev.env")
    ports = free_ports(len(names) + len(local))
    raw["gateway"]["ports"] = dict(zip(names, ports[:len(names)], strict=True))
    raw["local"] = dict(zip(local, ports[len(names):], strict=True))
    raw["gateway"]["data_dir"] = str(directory / "data")
    raw["gateway"]["max_body_bytes"] = 65536
    # Two test stacks share two cores: a generous Redis deadline keeps fail-closed tests about outages.
    raw["gateway"]["redis_timeout_ms"] = 1000
    raw["gateway"]["upstream"]["api_key_env"] = "DYNASEAL_TEST_PROVIDER_KEY"
    # The mock upstream's test hooks; every other client header is stripped before the upstream.
    raw["gateway"]["upstream"]["forward_headers"] = ["x-mock-status", "x-mock-delay-ms", "x-mock-chunk-delay-ms",
                                                  "x-mock-usage", "x-mock-abort-after-frames",
                                                  "x-mock-stream-error-after"]
    raw["tenants"][0]["callback"]["url"] = f"http://127.0.0.1:{raw['gateway']['ports']['issuer']}/v1/callback/usage"
    # The suite's receivers count and order single deliveries; batched delivery has tests of its own.
    raw["tenants"][0]["callback"].pop("batch", None)
    # Pages on the test issuer's origin (its demo page) and under a wildcard may call the gateway.
    raw["tenants"][0]["cors"] = {"origins": [f"http://127.0.0.1:{raw['gateway']['ports']['issuer']}",
                                             "https://*.pages.example"]}
    # Money: a reasoning price of its own (every token type priced differently) and one unpriced model.
    raw["tenants"][0]["upstream"]["prices"]["deepseek-chat"]["reasoning"] = "2.19"
    raw["tenants"][0]["limits"]["models"].append("mock-large")
    raw["tenants"].append({
        "id": OTHER_TENANT,
        "name": "Acme (test tenant)",
        "keys": [
            {"alg": "HS256", "secret_env": "DYNASEAL_TEST_ACME_SECRET"},
            {"kid": keys.acme_ed25519.kid, "alg": "EdDSA", "public_jwk": keys.acme_ed25519.public_jwk()},
            {"kid": keys.acme_rotated.kid, "alg": "EdDSA", "public_jwk": keys.acme_rotated.public_jwk()},
        ],
        "limits": {"models": ["gpt-4o-mini", "gpt-4o"], "max_tokens": 512, "max_ttl": 3600,
                   "params": {"temperature": {"min": 0, "max": 1.5}}},
    })
    raw["tenants"].append({
        "id": TENANT_BUDGET_TENANT,
        "keys": [{"kid": keys.acme_ed25519.kid, "alg": "EdDSA", "public_jwk": keys.acme_ed25519.public_jwk()}],
        "limits": {"models": ["deepseek-chat"], "max_tokens": 512, "max_ttl": 3600,
                   "tenant_budget": {"tokens": 5000, "window": "day"}},
    })
    path = directory / "dynaseal.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def test_keys() -> TenantKeys:
    """Signing keys of the test tenant."""
    return TenantKeys(SigningKey.generate("acme-1"), SigningKey.generate("acme-2"))


@pytest.fixture(scope="session")
def config_path(tmp_path_factory: pytest.TempPathFactory, test_keys: TenantKeys) -> Path:
    """Path of this session's config file."""
    os.environ["DYNASEAL_TEST_PROVIDER_KEY"] = PROVIDER_KEY
    os.environ["DYNASEAL_TEST_ACME_SECRET"] = OTHER_SECRET
    return write_test_config(tmp_path_factory.mktemp("dynaseal"), test_keys)


@pytest.fixture(scope="session")
def cfg(config_path: Path) -> DynasealConfig:
    """This session's loaded config."""
    return load_config(config_path)


@pytest.fixture(scope="session")
def stack(cfg: DynasealConfig, config_path: Path) -> Iterator[object]:
    """The real local stack (Envoy, authz, issuer, mock LLM), started once per session."""
    from dynaseal_launcher.stack import LocalStack

    local = LocalStack(cfg, config_path)
    local.start()
    try:
        yield local
    finally:
        local.stop()


def jwt_payload(token: str) -> dict[str, object]:
    """Decode a JWT payload without verifying (tests only)."""
    import base64

    part = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server of its own (not the stack's), for counter tests; yields its URL."""
    with private_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
def sync_redis(redis_server: str) -> Iterator[object]:
    """A plain client of `redis_server`, for settlement and inspection."""
    import redis

    client = redis.Redis.from_url(redis_server)
    yield client
    client.close()


def acme_tenant(cfg: DynasealConfig) -> Tenant:
    """The test tenant as the hot path sees it (the session's issuer JWKS must exist for the registry)."""
    from dynaseal.keys.signing_keystore import SigningKeyStore

    SigningKeyStore(cfg.data_path / "issuer").ensure()
    tenant = build_registry(cfg).get(OTHER_TENANT)
    assert tenant is not None
    return tenant


def verified_key(cfg: DynasealConfig, prefix: str, lifetime_s: float = 600, **fields: Any) -> VerifiedKey:
    """A verified key of the test tenant, no counter limits unless `fields` set them (budget, uses, ...)."""
    import time
    import uuid

    limits: dict[str, Any] = {"budget": None, "uses": None, "rpm": None, "max_tokens": 100, **fields}
    return VerifiedKey(tenant=acme_tenant(cfg), jti=f"{prefix}-{uuid.uuid4().hex}", exp=time.time() + lifetime_s,
                       event_id="e", sub=None, models=None, **limits)


@pytest.fixture
def jwks() -> Iterator[object]:
    """A local JWKS server whose document and behaviour a test scripts (jwks_support.JwksServer)."""
    from jwks_support import JwksServer

    server = JwksServer()
    yield server
    server.release.set()
    server.server.shutdown()
    server.server.server_close()  # the listening socket too: left to the collector it warns (ResourceWarning)


@pytest.fixture(scope="module")
def registry(cfg: DynasealConfig) -> Registry:
    """The test config's registry (the session's issuer JWKS made first)."""
    from dynaseal.keys.signing_keystore import SigningKeyStore

    SigningKeyStore(cfg.data_path / "issuer").ensure()
    return build_registry(cfg)


@pytest.fixture(scope="module")
def authorizer(registry: Registry) -> Authorizer:
    """An authorizer over the test config, without Redis."""
    return Authorizer(registry, quota=None)


def acme_key(test_keys: TenantKeys, **claims: object) -> str:
    """A native EdDSA key of the test tenant, its claims overridable (keyfactory.native_claims)."""
    from keyfactory import ed25519, native_claims, raw_token

    return raw_token({"alg": "EdDSA", "kid": test_keys.acme_ed25519.kid}, native_claims(OTHER_TENANT, **claims),
                     ed25519(test_keys.acme_ed25519))


@contextlib.contextmanager
def private_redis(directory: Path) -> Iterator[str]:
    """A throwaway redis-server (no persistence) from the stack's binary, for one test; its URL."""
    from dynaseal_launcher.probes import redis_ping
    from dynaseal_launcher.processes import ServiceSpec, Supervisor
    from dynaseal_launcher.stack import redis_server_binary

    port = free_ports(1)[0]
    supervisor = Supervisor(directory, "127.0.0.1")
    supervisor.start(ServiceSpec("redis", [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1",
                                           "--save", "", "--appendonly", "no", "--dir", str(directory)],
                                 f"redis://127.0.0.1:{port}", lambda: redis_ping("127.0.0.1", port)))
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        supervisor.stop()


@pytest.fixture(scope="module")
def issuer_key(cfg: DynasealConfig, stack: object) -> SigningKey:
    """The bundled issuer's active signing key (mints demo-tenant keys as the issuer would)."""
    from dynaseal.keys.signing_keystore import SigningKeyStore

    return SigningKeyStore(Path(cfg.gateway.data_dir) / "issuer").active()


@pytest.fixture(scope="module")
def redis_client(cfg: DynasealConfig, stack: object) -> Iterator[object]:
    """A client of the stack's Redis, where reservations are settled."""
    from redis import Redis

    from dynaseal.runtime.locations import redis_url

    client = Redis.from_url(redis_url(cfg))
    yield client
    client.close()


@pytest.fixture(scope="module")
def receiver(cfg: DynasealConfig) -> Iterator[object]:
    """A tenant callback endpoint in this process that verifies every signature (pipeline tests)."""
    from pipeline_harness import Receiver

    with Receiver(config_environment(cfg)["DYNASEAL_DEMO_WEBHOOK_SECRET"]) as running:
        yield running


def wait_until(condition: Callable[[], bool], timeout_s: float = 15.0) -> bool:
    """Poll `condition` every 0.1 s until it holds (True) or `timeout_s` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the test item (`item.report_call`), for fixtures that explain a failure."""
    report: pytest.TestReport = yield
    setattr(item, f"report_{report.when}", report)
    return report


def failed(request: pytest.FixtureRequest) -> bool:
    """Whether the test using this fixture failed in its call phase (read at the fixture's teardown)."""
    report = getattr(request.node, "report_call", None)
    return report is not None and report.failed
