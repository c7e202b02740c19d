"""Fail closed against a stack of its own: Redis stopped mid-run, authz stopped, config reloads.

It stops and restarts services, so it does not share the session stack with other tests.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import OTHER_TENANT, TenantKeys, wait_until, write_test_config

from dynaseal.config import load_config
from dynaseal.keys.mint import mint
from dynaseal_launcher.probes import grpc_serving
from dynaseal_launcher.stack import AUTHZ_SERVICE_NAME, LocalStack

pytestmark = pytest.mark.integration



@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory, test_keys: TenantKeys,
              config_path: Path) -> Iterator[LocalStack]:
    """Redis + authz + Envoy + mock LLM on ports of their own (no issuer, no pipeline)."""
    directory = tmp_path_factory.mktemp("failclosed")
    path = write_test_config(directory, test_keys)
    raw = yaml.safe_load(path.read_text())
    raw.pop("issuer")
    raw["tenants"] = [t for t in raw["tenants"] if t["id"] == OTHER_TENANT]
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    stack = LocalStack(load_config(path), path, pipeline=False)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def post(stack: LocalStack, key: str, **extra: object) -> httpx.Response:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8, **extra}
    return httpx.post(f"http://127.0.0.1:{stack.cfg.gateway.ports.envoy}/v1/chat/completions",
                      headers={"authorization": f"Bearer {key}"}, json=body, timeout=10)


def authz_serving(stack: LocalStack) -> bool:
    return grpc_serving(f"127.0.0.1:{stack.cfg.gateway.ports.authz}", AUTHZ_SERVICE_NAME)


def test_redis_outage_fails_closed_then_recovers(own_stack: LocalStack, test_keys: TenantKeys) -> None:
    key = mint(test_keys.acme_ed25519, tenant=OTHER_TENANT, models=["gpt-4o-mini"], max_tokens=64, ttl=600)
    assert post(own_stack, key).status_code == 200
    redis_spec = own_stack.supervisor.stop_service("redis")
    try:
        for _ in range(5):
            reply = post(own_stack, key)
            assert reply.status_code == 503
            assert reply.json()["error"]["code"] == "authz_unavailable"
        assert wait_until(lambda: not authz_serving(own_stack)), "health never went NOT_SERVING"
        # Liveness (service "") stays SERVING: a Redis outage must not get authz restarted.
        assert grpc_serving(f"127.0.0.1:{own_stack.cfg.gateway.ports.authz}", "")
    finally:
        own_stack.supervisor.start(redis_spec)
    assert wait_until(lambda: authz_serving(own_stack)), "health never came back to SERVING"
    assert wait_until(lambda: post(own_stack, key).status_code == 200), "service did not resume"


def test_authz_down_is_503_never_an_allow(own_stack: LocalStack, test_keys: TenantKeys) -> None:
    key = mint(test_keys.acme_ed25519, tenant=OTHER_TENANT, models=["gpt-4o-mini"], max_tokens=64, ttl=600)
    authz_spec = own_stack.supervisor.stop_service("authz", signal.SIGKILL)
    try:
        reply = post(own_stack, key)
        assert reply.status_code == 503
        assert reply.json()["error"]["code"] == "authz_unavailable"
    finally:
        own_stack.supervisor.start(authz_spec)
    assert wait_until(lambda: post(own_stack, key).status_code == 200)


def test_config_reload_on_change_and_bad_config_keeps_old(own_stack: LocalStack, test_keys: TenantKeys) -> None:
    path = own_stack.config_path
    original = path.read_text()
    key = mint(test_keys.acme_ed25519, tenant=OTHER_TENANT, models=["gpt-4o", "gpt-4o-mini"], max_tokens=64, ttl=600)
    assert post(own_stack, key, model="gpt-4o").status_code == 200
    try:
        raw = yaml.safe_load(original)
        raw["tenants"][0]["limits"]["models"] = ["gpt-4o-mini"]  # tenant no longer allows gpt-4o
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        assert wait_until(lambda: post(own_stack, key, model="gpt-4o").status_code == 403), "no reload on change"
        path.write_text("tenants: [ {id: broken")  # invalid YAML: the running config must stay
        os.kill(next(s.process.pid for s in own_stack.supervisor.running if s.spec.name == "authz"), signal.SIGHUP)
        time.sleep(2.5)
        assert post(own_stack, key, model="gpt-4o").status_code == 403
        assert post(own_stack, key, model="gpt-4o-mini").status_code == 200
    finally:
        path.write_text(original)
    assert wait_until(lambda: post(own_stack, key, model="gpt-4o").status_code == 200)
