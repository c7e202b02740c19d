"""The admin API in-process: its token, tenant writes checked as the file is, secrets never returned or
logged, and the seed's backend registration (login form, api_key/create shape)."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient

from admin_api.service import build_app
from dynaseal.config import bundled_dev_config

TOKEN = "test-admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DEMO = "671249a93f1cf2f8bf9b2b82"
SEED_SECRET = "gamma-seed-secret-value-0123456789abcdef"
HOOK_SECRET = "whsec_" + base64.b64encode(b"gamma-webhook-secret-0123456789").decode()


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The admin app over a fresh store, the bundled dev config (demo accounts on)."""
    monkeypatch.setenv("DYNASEAL_TEST_ADMIN_TOKEN", TOKEN)
    raw = yaml.safe_load(bundled_dev_config().read_text())
    raw["env_file"] = str(bundled_dev_config().parent / "dev.env")
    raw["gateway"]["data_dir"] = str(tmp_path / "data")
    raw["gateway"]["redis_url"] = "redis://127.0.0.1:1/0"  # nothing there: total_tokens is not under test here
    raw["tenants"][0].pop("jwks_file")
    raw["admin"] = {"token_env": "DYNASEAL_TEST_ADMIN_TOKEN", "demo_accounts": True}
    path = tmp_path / "dynaseal.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with TestClient(build_app(path, follow=False)) as test_client:
        yield test_client


def gamma(**extra: Any) -> dict[str, Any]:
    """A tenant write for a new tenant whose secrets the store holds."""
    return {"tenant": {"id": "gamma", "name": "Gamma", "limits": {"models": ["deepseek-chat"], "max_tokens": 64},
                       "callback": {"url": "http://127.0.0.1:9/cb"}, **extra},
            "secrets": {"seed": SEED_SECRET, "callback": HOOK_SECRET}}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token"}, {"Authorization": TOKEN},
                                     {"Authorization": f"Basic {TOKEN}"}])
def test_the_admin_api_refuses_a_missing_or_wrong_token(client: TestClient, headers: dict[str, str]) -> None:
    for method, path in (("GET", "/admin/v1/tenants"), ("POST", "/admin/v1/tenants"),
                         ("POST", f"/admin/v1/tenants/{DEMO}/disable"), ("GET", "/admin/v1/status")):
        answer = client.request(method, path, headers=headers, json=gamma())
        assert answer.status_code == 401, (method, path)
    assert client.get("/admin/v1/tenants", headers=AUTH).status_code == 200


def test_a_created_tenant_is_listed_and_its_secret_values_never_come_back(
        client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    created = client.post("/admin/v1/tenants", headers=AUTH, json=gamma())
    assert created.status_code == 201, created.text
    assert created.json()["generation"] >= 1
    listed = client.get("/admin/v1/tenants", headers=AUTH).text
    one = client.get("/admin/v1/tenants/gamma", headers=AUTH)
    assert one.status_code == 200 and one.json()["source"] == "store"
    for text in (created.text, listed, one.text, caplog.text):
        assert SEED_SECRET not in text and HOOK_SECRET not in text
    assert "dynaseal-store:gamma/seed" in one.text  # a reference, not the value
    assert client.post("/admin/v1/tenants", headers=AUTH, json=gamma()).status_code == 409
    demo = client.post("/admin/v1/tenants", headers=AUTH, json={"tenant": {"id": DEMO, "jwks_url": "https://x.example/j"}})
    assert demo.status_code == 409  # the file's tenants are changed in the file


@pytest.mark.parametrize(("change", "named"), [
    ({"callback": {"url": "htp:/127.0.0.1:9/cb"}}, "callback url 'htp:/127.0.0.1:9/cb'"),
    ({"limits": {"models": ["deepseek-chat"], "max_tokens": 0}}, "limits.max_tokens"),
    ({"upstream": {"routes": [{"model": "deepseek-chat", "upstreams": ["nowhere"]}]}}, "nowhere"),
    ({"keys": [{"alg": "HS256", "secret_env": "DYNASEAL_TEST_UNSET_VARIABLE"}]}, "DYNASEAL_TEST_UNSET_VARIABLE"),
    ({"surprise": 1}, "surprise"),
])
def test_a_bad_tenant_is_refused_with_a_4xx_naming_the_problem(client: TestClient, change: dict[str, Any],
                                                               named: str) -> None:
    before = client.get("/admin/v1/status", headers=AUTH).json()["store_generation"]
    answer = client.post("/admin/v1/tenants", headers=AUTH, json=gamma(**change))
    assert answer.status_code == 422, answer.text
    assert named in answer.text
    assert client.get("/admin/v1/status", headers=AUTH).json()["store_generation"] == before  # nothing written


def test_a_stored_tenant_can_be_changed_disabled_and_rotated(client: TestClient) -> None:
    assert client.post("/admin/v1/tenants", headers=AUTH, json=gamma()).status_code == 201
    changed = client.put("/admin/v1/tenants/gamma", headers=AUTH, json={"tenant": {
        "id": "gamma", "limits": {"models": ["gpt-4o-mini"], "max_tokens": 32}, "callback": {"url": "http://127.0.0.1:9/cb"}}})
    assert changed.status_code == 200, changed.text
    tenant = client.get("/admin/v1/tenants/gamma", headers=AUTH).json()["tenant"]
    assert tenant["limits"]["models"] == ["gpt-4o-mini"]
    assert len(tenant["keys"]) == 1  # the stored seed secret stays referenced
    assert client.post("/admin/v1/tenants/gamma/disable", headers=AUTH).json()["disabled"] is True
    assert client.get("/admin/v1/tenants/gamma", headers=AUTH).json()["disabled"] is True
    assert client.post("/admin/v1/tenants/gamma/enable", headers=AUTH).json()["disabled"] is False
    rotated = client.post("/admin/v1/tenants/gamma/rotate-webhook-secret", headers=AUTH, json={"grace_s": 60})
    assert rotated.status_code == 200 and rotated.json()["secret"].startswith("whsec_")
    callback = client.get("/admin/v1/tenants/gamma", headers=AUTH).json()["tenant"]["callback"]
    assert len(callback["previous_secret_envs"]) == 1
    given = client.post("/admin/v1/tenants/gamma/rotate-signing-secret", headers=AUTH,
                        json={"secret": "operator-chosen-secret-0123456789abcdef", "grace_s": 0})
    assert given.status_code == 200 and "secret" not in given.json()
    assert client.post("/admin/v1/tenants/nobody/disable", headers=AUTH).status_code == 404
    assert client.put(f"/admin/v1/tenants/{DEMO}", headers=AUTH, json=gamma()).status_code == 409


def test_the_seed_registration_logs_in_by_e_mail_and_creates_a_signing_secret(client: TestClient) -> None:
    # The seed's client/get_llm_api.py: an OAuth2 password form with the e-mail as username.
    form = {"grant_type": "password", "username": "user1@example.com", "password": "user1", "scope": "",
            "client_id": "string", "client_secret": "string"}
    headers = {"accept": "application/json", "Content-Type": "application/x-www-form-urlencoded"}
    login = client.post("/api/v1/user/login", headers=headers, data=form)
    assert login.status_code == 200, login.text
    assert set(login.json()) == {"access_token", "refresh_token", "token_type"}
    token = login.json()["access_token"]
    created = client.post("/api/v1/api_key/create", headers={"Authorization": "Bearer " + token})
    assert created.status_code == 200
    body = created.json()
    assert set(body) == {"_id", "revision_id", "api_key", "last_used"} and len(body["api_key"]) == 36
    listed = client.get(f"/admin/v1/tenants/{DEMO}", headers=AUTH).json()["tenant"]["keys"]
    assert sum(1 for k in listed if "kid" not in k) == 2  # the file's secret and the new one
    # No ledger reachable here: a clear 503, not a traceback (the stack test reads the real total).
    me = client.get("/api/v1/user/me", headers={"Authorization": "Bearer " + token})
    assert me.status_code == 503 and "ledger" in me.text


@pytest.mark.parametrize("form", [{"username": "user1@example.com", "password": "wrong"},
                                  {"username": "nobody@example.com", "password": "user1"},
                                  {"username": "user1@example.com", "password": "x" * 100}])
def test_the_seed_login_refuses_bad_credentials(client: TestClient, form: dict[str, str]) -> None:
    assert client.post("/api/v1/user/login", data=form).status_code == 401


def test_api_key_create_needs_an_access_token(client: TestClient) -> None:
    login = client.post("/api/v1/user/login", data={"username": "user1", "password": "user1"}).json()
    for headers in ({}, {"Authorization": "Bearer nonsense"}, {"Authorization": "Bearer " + login["refresh_token"]},
                    AUTH):
        assert client.post("/api/v1/api_key/create", headers=headers).status_code == 401


def test_a_store_tenant_may_only_route_to_chains_the_running_envoy_has(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYNASEAL_TEST_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("DYNASEAL_TEST_PROVIDER_A", "sk-a")
    raw = yaml.safe_load(bundled_dev_config().read_text())
    raw["env_file"] = str(bundled_dev_config().parent / "dev.env")
    raw["gateway"]["data_dir"] = str(tmp_path / "data")
    raw["gateway"]["upstreams"] = [
        {"name": "first", "base_url": "http://127.0.0.1:9/v1", "api_key_env": "DYNASEAL_TEST_PROVIDER_A"},
        {"name": "second", "base_url": "http://127.0.0.1:9/v1", "api_key_env": "DYNASEAL_TEST_PROVIDER_A"}]
    raw["tenants"][0].pop("jwks_file")
    raw["tenants"][0]["upstream"]["routes"] = [{"model": "*", "upstreams": ["first"]}]
    raw["admin"] = {"token_env": "DYNASEAL_TEST_ADMIN_TOKEN"}
    path = tmp_path / "dynaseal.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with TestClient(build_app(path, follow=False)) as client:
        routed = {"routes": [{"model": "*", "upstreams": ["first"]}]}
        served = client.post("/admin/v1/tenants", headers=AUTH, json={
            "tenant": {"id": "routed", "upstream": routed}, "secrets": {"seed": SEED_SECRET}})
        assert served.status_code == 201, served.text
        moved = client.put("/admin/v1/tenants/routed", headers=AUTH, json={"tenant": {
            "id": "routed", "upstream": {"routes": [{"model": "*", "upstreams": ["second"]}]}}})
        assert moved.status_code == 422
        assert "route to second for chat_completions: the gateway's Envoy has no route" in moved.text


def test_a_malformed_request_never_echoes_a_secret_value(client: TestClient) -> None:
    body = gamma()
    body["secrets"]["seed"] = ["not", "a", SEED_SECRET]
    answer = client.post("/admin/v1/tenants", headers=AUTH, json=body)
    assert answer.status_code == 422 and "secrets.seed" in answer.text
    assert SEED_SECRET not in answer.text
    assert client.post("/admin/v1/tenants", json=body).status_code == 401  # the token before the body


def test_failed_seed_logins_are_throttled_per_account(client: TestClient) -> None:
    for _ in range(10):
        assert client.post("/api/v1/user/login", data={"username": "user1@example.com",
                                                        "password": "guess"}).status_code == 401
    throttled = client.post("/api/v1/user/login", data={"username": "USER1@example.com", "password": "user1"})
    assert throttled.status_code == 429 and int(throttled.headers["retry-after"]) > 0


def test_a_tenant_keeps_a_bounded_number_of_open_seed_secrets(client: TestClient) -> None:
    token = client.post("/api/v1/user/login", data={"username": "user1", "password": "user1"}).json()["access_token"]
    for _ in range(12):
        assert client.post("/api/v1/api_key/create", headers={"Authorization": "Bearer " + token}).status_code == 200
    keys = client.get(f"/admin/v1/tenants/{DEMO}", headers=AUTH).json()["tenant"]["keys"]
    assert sum(1 for k in keys if "kid" not in k) == 1 + 8  # the file's and the newest 8


def test_a_tenant_cannot_name_another_tenants_stored_secret(client: TestClient) -> None:
    assert client.post("/admin/v1/tenants", headers=AUTH, json=gamma()).status_code == 201
    thief = {"tenant": {"id": "thief", "keys": [{"alg": "HS256", "secret_env": "dynaseal-store:gamma/seed/1"}],
                        "callback": {"url": "http://127.0.0.1:9/cb", "secret_env": "dynaseal-store:gamma/callback/2"}}}
    answer = client.post("/admin/v1/tenants", headers=AUTH, json=thief)
    assert answer.status_code == 422
    assert "dynaseal-store:gamma/seed/1" in answer.text and "dynaseal-store:gamma/callback/2" in answer.text


def test_api_key_create_is_rate_limited_per_account(client: TestClient) -> None:
    token = client.post("/api/v1/user/login", data={"username": "user1", "password": "user1"}).json()["access_token"]
    answers = [client.post("/api/v1/api_key/create", headers={"Authorization": "Bearer " + token}).status_code
               for _ in range(31)]
    assert answers[:30] == [200] * 30 and answers[30] == 429
