"""Tenants as data on the real stack (Envoy, authz, Redis, Kafka, consumers, admin): created, disabled,
changed and rotated through the admin API while no service restarts; the seed's registration on the
gateway's port."""

from __future__ import annotations

import base64
import re
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import DEMO_SECRET, DEMO_TENANT, wait_until
from pipeline_harness import Receiver
from standardwebhooks import Webhook

from dynaseal.config import DynasealConfig, config_environment
from dynaseal.keys.mint import mint_seed_key

pytestmark = pytest.mark.integration
OLD_HOOK = "whsec_" + base64.b64encode(b"e2e-old-webhook-secret-0123456789").decode()
NEW_HOOK = "whsec_" + base64.b64encode(b"e2e-new-webhook-secret-0123456789").decode()


class Stack:
    """Addresses of the running stack and the calls these tests make."""

    def __init__(self, cfg: DynasealConfig, local: Any) -> None:

        self.local = local
        self.gateway = f"http://127.0.0.1:{cfg.gateway.ports.envoy}"
        token = config_environment(cfg)["DYNASEAL_ADMIN_TOKEN"]
        self.admin = httpx.Client(base_url=f"http://127.0.0.1:{cfg.gateway.ports.admin}/admin/v1", timeout=10,
                                  headers={"Authorization": f"Bearer {token}"})

    def pids(self) -> dict[str, int]:
        """Each running service's process id."""
        return {s.spec.name: s.process.pid for s in self.local.supervisor.running}

    def metrics_urls(self) -> dict[str, str]:
        """The metrics endpoint of each service that has one (authz, consumers, shipper)."""
        urls = {}
        for service in self.local.supervisor.running:
            for label, port in service.spec.ports:
                if label == "metrics":
                    urls[service.spec.name] = f"http://127.0.0.1:{port}/metrics"
        return urls

    def generations(self) -> dict[str, int]:
        """`dynaseal_config_generation` as every service reports it."""
        found = {}
        for name, url in self.metrics_urls().items():
            match = re.search(r"^dynaseal_config_generation (\S+)$", httpx.get(url).text, re.MULTILINE)
            assert match, f"{name} reports no dynaseal_config_generation"
            found[name] = int(float(match.group(1)))
        return found

    def all_run(self, generation: int) -> bool:
        """Whether every service runs `generation` (or a later one)."""
        return all(g >= generation for g in self.generations().values())

    def chat(self, token: str, **headers: str) -> httpx.Response:
        """One small chat completion through Envoy."""
        return httpx.post(f"{self.gateway}/v1/chat/completions", timeout=30,
                          headers={"Authorization": f"Bearer {token}", **headers},
                          json={"model": "deepseek-chat", "max_tokens": 16,
                                "messages": [{"role": "user", "content": "hello"}]})


@pytest.fixture(scope="module")
def live(cfg: DynasealConfig, stack: object) -> Iterator[Stack]:
    """The session's stack, as these tests use it."""
    running = Stack(cfg, stack)
    yield running
    running.admin.close()


def seed_key(tenant: str, secret: str) -> str:
    """A seed-format key (HS256, no kid) of `tenant`."""
    return mint_seed_key(tenant, secret, model="deepseek-chat", max_tokens=16, ttl=300, event_id=uuid.uuid4().hex)


def new_tenant(live: Stack, secret: str, **extra: Any) -> tuple[str, int]:
    """Create a tenant through the admin API; its id and the generation that has it."""
    tenant_id = f"e2e-{uuid.uuid4().hex[:10]}"
    created = live.admin.post("/tenants", json={
        "tenant": {"id": tenant_id, "limits": {"models": ["deepseek-chat"], "max_tokens": 64}, **extra},
        "secrets": {"seed": secret, **({"callback": OLD_HOOK} if "callback" in extra else {})}})
    assert created.status_code == 201, created.text
    return tenant_id, int(created.json()["generation"])


def test_a_tenant_created_through_the_admin_api_serves_within_seconds_without_a_restart(live: Stack) -> None:
    pids = live.pids()
    secret = uuid.uuid4().hex
    tenant_id, generation = new_tenant(live, secret)
    token = seed_key(tenant_id, secret)
    started = time.monotonic()
    assert wait_until(lambda: live.chat(token).status_code == 200, 15), "the new tenant was never admitted"
    print(f"first request of tenant {tenant_id} admitted {time.monotonic() - started:.2f} s after creation")
    assert wait_until(lambda: live.all_run(generation), 10), live.generations()
    assert live.pids() == pids  # nothing restarted
    from dynaseal_launcher.status import report

    [line] = [line for line in report(live.local.cfg, "dynaseal-callbacks") if line.startswith("config")]
    reported = re.findall(r"(?:authz|consumer|shipper) (\d+)", line)
    assert len(reported) == 3 and all(int(n) >= generation for n in reported), line
    assert all(s.process.poll() is None for s in live.local.supervisor.running)


def test_a_disabled_tenant_is_refused_and_an_enabled_one_serves_again(live: Stack) -> None:
    secret = uuid.uuid4().hex
    tenant_id, _ = new_tenant(live, secret)
    token = seed_key(tenant_id, secret)
    assert wait_until(lambda: live.chat(token).status_code == 200, 15)
    disabled = live.admin.post(f"/tenants/{tenant_id}/disable")
    assert disabled.status_code == 200
    started = time.monotonic()
    assert wait_until(lambda: live.chat(token).status_code == 401, 5), "a disabled tenant was still served"
    print(f"disabled tenant refused {time.monotonic() - started:.2f} s after the call")
    refused = live.chat(token)
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert live.admin.post(f"/tenants/{tenant_id}/enable").status_code == 200
    assert wait_until(lambda: live.chat(token).status_code == 200, 5)


def test_a_bad_change_is_refused_naming_the_problem_and_the_old_state_keeps_serving(live: Stack) -> None:
    secret = uuid.uuid4().hex
    tenant_id, generation = new_tenant(live, secret)
    token = seed_key(tenant_id, secret)
    assert wait_until(lambda: live.chat(token).status_code == 200, 15)
    for bad, named in (({"upstream": {"routes": [{"model": "deepseek-chat", "upstreams": ["nowhere"]}]}}, "nowhere"),
                       ({"callback": {"url": "htp:/127.0.0.1/cb", "secret_env": "X"}}, "htp:/127.0.0.1/cb"),
                       ({"keys": [{"alg": "HS256", "secret_env": "DYNASEAL_E2E_UNSET"}]}, "DYNASEAL_E2E_UNSET")):
        answer = live.admin.put(f"/tenants/{tenant_id}", json={"tenant": {"id": tenant_id, **bad}})
        assert answer.status_code == 422, answer.text
        assert named in answer.text
    assert live.admin.get("/status").json()["store_generation"] >= generation
    assert live.chat(token).status_code == 200  # the old tenant keeps serving
    assert live.admin.get(f"/tenants/{tenant_id}").json()["tenant"]["limits"]["max_tokens"] == 64


class SwitchingReceiver(Receiver):
    """A tenant backend that verifies with exactly one secret at a time and can switch to another."""

    def switch(self, secret: str) -> None:
        """From now on verify with `secret` only."""
        with self.lock:
            self.webhook = Webhook(secret)


def test_the_webhook_secret_rotates_while_traffic_flows_and_no_callback_is_lost(live: Stack) -> None:
    receiver = SwitchingReceiver(OLD_HOOK)
    with receiver:
        secret = uuid.uuid4().hex
        tenant_id, _ = new_tenant(live, secret, callback={"url": receiver.url})
        assert wait_until(lambda: live.chat(seed_key(tenant_id, secret)).status_code == 200, 15)
        sent: list[str] = []
        stop = threading.Event()

        def traffic() -> None:
            while not stop.is_set() and len(sent) < 200:
                reply = live.chat(seed_key(tenant_id, secret))
                assert reply.status_code == 200, reply.text
                sent.append(reply.headers["x-dynaseal-request-id"])
                time.sleep(0.05)

        sender = threading.Thread(target=traffic)
        sender.start()
        try:
            assert wait_until(lambda: len(receiver.deliveries) >= 3, 30), "no callbacks before the rotation"
            rotated = live.admin.post(f"/tenants/{tenant_id}/rotate-webhook-secret",
                                      json={"secret": NEW_HOOK, "grace_s": 120})
            assert rotated.status_code == 200 and "secret" not in rotated.json()
            # The backend switches once the consumers sign with both: callbacks keep verifying throughout.
            assert wait_until(lambda: live.all_run(int(rotated.json()["generation"])), 10), live.generations()
            time.sleep(1.0)
            receiver.switch(NEW_HOOK)
            before = len(receiver.deliveries)
            assert wait_until(lambda: len(receiver.deliveries) >= before + 3, 30), "no callbacks after the switch"
        finally:
            stop.set()
            sender.join(60)
        def delivered() -> set[str]:
            return {d.webhook_id for d in receiver.deliveries}

        assert wait_until(lambda: set(sent) <= delivered(), 60), f"{len(set(sent) - delivered())} callbacks missing"
        assert receiver.bad_signatures == 0
        print(f"{len(sent)} requests, {len(delivered())} callbacks verified across the rotation")


def test_the_seeds_registration_on_the_gateways_port_gives_a_secret_that_signs_at_once(live: Stack) -> None:
    # client/get_llm_api.py of the seed, exactly: backend_url is the gateway's port + /api/v1.
    backend_url = live.gateway + "/api/v1"
    login_headers = {"accept": "application/json", "Content-Type": "application/x-www-form-urlencoded"}
    login_data = {"grant_type": "password", "username": "user1@example.com", "password": "user1", "scope": "",
                  "client_id": "string", "client_secret": "string"}
    response = httpx.post(backend_url + "/user/login", headers=login_headers, data=login_data).json()
    token = response["access_token"]
    response = httpx.post(backend_url + "/api_key/create", headers={"Authorization": "Bearer " + token}).json()
    assert set(response) == {"_id", "revision_id", "api_key", "last_used"}
    new_secret = response["api_key"]
    usage = httpx.get(backend_url + "/user/me", headers={"Authorization": "Bearer " + token})
    assert usage.status_code == 200, usage.text
    total_before = int(usage.json()["total_tokens"])
    new_key = seed_key(DEMO_TENANT, new_secret)
    started = time.monotonic()
    assert wait_until(lambda: live.chat(new_key).status_code == 200, 15), "the new secret never verified"
    print(f"new seed secret verified {time.monotonic() - started:.2f} s after api_key/create")
    assert live.chat(seed_key(DEMO_TENANT, DEMO_SECRET)).status_code == 200  # the previous secret too

    def spent() -> int:
        return int(httpx.get(backend_url + "/user/me", headers={"Authorization": "Bearer " + token}).json()
                   ["total_tokens"])

    assert wait_until(lambda: spent() > total_before, 30), "the backend's total_tokens never grew"
    # The registration routes carry no key, yet nothing else of the admin API is reachable on this port.
    assert httpx.get(f"{live.gateway}/admin/v1/tenants").status_code == 404
    assert httpx.post(backend_url + "/api_key/create").status_code == 401
