"""The admin API against a malicious backend account, an outsider on the gateway's port, and an operator's
mistakes: each test here failed on the code before its fix."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml
from fastapi.testclient import TestClient

from admin_api import usage_totals
from admin_api.service import build_app
from admin_api.throttle import Throttle
from dynaseal.config import bundled_dev_config, load_config
from dynaseal.tenancy.overlay import seed_marker
from dynaseal.tenancy.store import PURPOSE_SEED, TenantStore, store_url

TOKEN = "test-admin-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DEMO = "671249a93f1cf2f8bf9b2b82"
SEED_SECRET = "hardening-seed-secret-0123456789abcdef"
HOOK_SECRET = "whsec_" + base64.b64encode(b"hardening-webhook-secret-0123456789").decode()


@pytest.fixture
def config_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The bundled dev config with an admin section (demo accounts on) and a fresh store in tmp_path."""
    monkeypatch.setenv("DYNASEAL_TEST_ADMIN_TOKEN", TOKEN)
    raw = yaml.safe_load(bundled_dev_config().read_text())
    raw["env_file"] = str(bundled_dev_config().parent / "dev.env")
    raw["gateway"]["data_dir"] = str(tmp_path / "data")
    raw["gateway"]["redis_url"] = "redis://127.0.0.1:1/0"
    raw["tenants"][0].pop("jwks_file")
    raw["admin"] = {"token_env": "DYNASEAL_TEST_ADMIN_TOKEN", "demo_accounts": True}
    path = tmp_path / "dynaseal.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture
def client(config_path: Path) -> Iterator[TestClient]:
    """The admin app over that config."""
    with TestClient(build_app(config_path, follow=False), raise_server_exceptions=False) as test_client:
        yield test_client


def tenant(tenant_id: str, seed: str = SEED_SECRET) -> dict[str, Any]:
    """A tenant write whose seed-format secret the store holds."""
    return {"tenant": {"id": tenant_id, "limits": {"models": ["deepseek-chat"], "max_tokens": 64}},
            "secrets": {"seed": seed}}


def access_token(client: TestClient) -> str:
    """The demo backend account's session token, logged in as the seed's script does."""
    login = client.post("/api/v1/user/login", data={"username": "user1@example.com", "password": "user1"})
    assert login.status_code == 200, login.text
    token: str = login.json()["access_token"]
    return token


def test_a_disabled_tenants_backend_cannot_create_signing_secrets(client: TestClient) -> None:
    token = access_token(client)
    assert client.post(f"/admin/v1/tenants/{DEMO}/disable", headers=AUTH).status_code == 200
    refused = client.post("/api/v1/api_key/create", headers={"Authorization": "Bearer " + token})
    assert refused.status_code == 403 and "disabled" in refused.text
    keys = client.get(f"/admin/v1/tenants/{DEMO}", headers=AUTH).json()["tenant"]["keys"]
    assert sum(1 for k in keys if "kid" not in k) == 1  # the file's secret only: nothing was added
    assert client.post(f"/admin/v1/tenants/{DEMO}/enable", headers=AUTH).status_code == 200
    assert client.post("/api/v1/api_key/create", headers={"Authorization": "Bearer " + token}).status_code == 200


@pytest.mark.parametrize("tenant_id", ["a/b", "a b", "a\nb", "..", ".hidden", "a{b}", "a:b", "\u202eevil", "ä",
                                       "a*", "a%2Fb"])
def test_a_store_tenant_id_must_be_addressable_in_the_api(client: TestClient, tenant_id: str) -> None:
    created = client.post("/admin/v1/tenants", headers=AUTH, json=tenant(tenant_id))
    assert created.status_code == 422, created.text
    assert "id: " in created.text
    assert client.get("/admin/v1/tenants", headers=AUTH).json()["generation"] == 0  # nothing stored


def test_a_store_tenant_id_in_the_allowed_alphabet_is_created_and_managed(client: TestClient) -> None:
    tenant_id = "Acme-2.prod_eu"
    assert client.post("/admin/v1/tenants", headers=AUTH, json=tenant(tenant_id)).status_code == 201
    assert client.post(f"/admin/v1/tenants/{tenant_id}/disable", headers=AUTH).status_code == 200


@pytest.mark.parametrize("secret", ["", " " * 20, "a", "short-secret-15"])
def test_a_weak_seed_signing_secret_is_refused(client: TestClient, secret: str) -> None:
    created = client.post("/admin/v1/tenants", headers=AUTH, json=tenant("weak", seed=secret))
    assert created.status_code == 422 and "secrets.seed: at least 16 characters" in created.text
    rotated = client.post(f"/admin/v1/tenants/{DEMO}/rotate-signing-secret", headers=AUTH, json={"secret": secret})
    assert rotated.status_code == 422 and "secret: at least 16 characters" in rotated.text
    if len(secret.strip()) > 1:
        assert secret not in created.text + rotated.text
    assert client.get("/admin/v1/status", headers=AUTH).json()["store_generation"] == 0


def test_failed_logins_by_username_and_by_e_mail_share_one_count(client: TestClient) -> None:
    for name in ("user1@example.com", "user1") * 5:
        assert client.post("/api/v1/user/login", data={"username": name, "password": "guess"}).status_code == 401
    for name in ("user1", "User1@Example.com"):
        throttled = client.post("/api/v1/user/login", data={"username": name, "password": "user1"})
        assert throttled.status_code == 429, name


def test_a_flood_of_made_up_names_does_not_reset_an_accounts_failed_logins(client: TestClient) -> None:
    for _ in range(10):
        assert client.post("/api/v1/user/login", data={"username": "user1@example.com",
                                                        "password": "guess"}).status_code == 401
    throttle: Throttle = client.app.state.login_throttle  # type: ignore[attr-defined]
    # What 10,000 failed logins with made-up names leave in the throttle (sent over HTTP they cost a bcrypt each).
    for n in range(10_000):
        throttle.count(f"nobody-{n}@example.com")
        throttle.count(f"name:nobody-{n}@example.com")
    assert client.post("/api/v1/user/login", data={"username": "user1@example.com",
                                                    "password": "user1"}).status_code == 429


def test_an_unknown_name_is_throttled_as_an_account_is(client: TestClient) -> None:
    # Otherwise a 429 after ten failures would tell which e-mails have an account.
    for _ in range(10):
        assert client.post("/api/v1/user/login", data={"username": "nobody@example.com",
                                                        "password": "guess"}).status_code == 401
    assert client.post("/api/v1/user/login", data={"username": "nobody@example.com",
                                                    "password": "guess"}).status_code == 429


@pytest.mark.parametrize("query", ["since=0001-01-01T00:00:00", "until=0001-01-01T00:00:00",
                                   "since=0001-01-01T00:00:00&until=0001-01-02T00:00:00&bucket=day"])
@pytest.mark.parametrize("path", ["/admin/v1/usage", "/admin/v1/refusals"])
def test_a_date_out_of_range_is_a_400_not_a_500(client: TestClient, path: str, query: str) -> None:
    answer = client.get(f"{path}?{query}", headers=AUTH)
    assert answer.status_code == 400, answer.text


def test_a_bad_stored_row_is_left_out_and_the_rest_keeps_serving(config_path: Path) -> None:
    # Rows written under another file or version (or by hand in a shared database) that no longer validate.
    store = TenantStore(store_url(load_config(config_path)))
    good = tenant("good")["tenant"] | {"keys": [{"alg": "HS256", "secret_env": seed_marker("good")}]}
    store.put_tenant("good", good, {PURPOSE_SEED: SEED_SECRET})
    store.put_tenant("bad", {"id": "bad", "keys": [], "limits": {}}, {})
    store.put_tenant("stale", tenant("stale")["tenant"] | {
        "keys": [{"alg": "HS256", "secret_env": seed_marker("stale")}],
        "upstream": {"routes": [{"model": "*", "upstreams": ["removed-from-the-file"]}]}}, {PURPOSE_SEED: SEED_SECRET})
    store.close()
    with TestClient(build_app(config_path, follow=False), raise_server_exceptions=False) as client:
        listed = client.get("/admin/v1/tenants", headers=AUTH)
        assert listed.status_code == 200, listed.text
        assert {t["id"] for t in listed.json()["tenants"]} == {DEMO, "good"}
        left_out = {q["id"]: q["problem"] for q in listed.json()["quarantined"]}
        assert set(left_out) == {"bad", "stale"} and "removed-from-the-file" in left_out["stale"]
        # The operator can still act: disable the bad row, add a tenant, fix the stale one.
        assert client.post("/admin/v1/tenants/bad/disable", headers=AUTH).status_code == 200
        assert client.post("/admin/v1/tenants", headers=AUTH, json=tenant("fresh")).status_code == 201
        assert client.post("/admin/v1/tenants/stale/rotate-webhook-secret", headers=AUTH, json={}).status_code == 409
        still_bad = client.put("/admin/v1/tenants/stale", headers=AUTH, json={"tenant": {
            "id": "stale", "upstream": {"routes": [{"model": "*", "upstreams": ["still-not-in-the-file"]}]}}})
        assert still_bad.status_code == 422 and "still-not-in-the-file" in still_bad.text
        fixed = client.put("/admin/v1/tenants/stale", headers=AUTH, json={"tenant": {"id": "stale"}})
        assert fixed.status_code == 200, fixed.text
        after = client.get("/admin/v1/tenants", headers=AUTH).json()
        assert {t["id"] for t in after["tenants"]} == {DEMO, "good", "fresh", "stale"}
        assert [q["id"] for q in after["quarantined"]] == ["bad"]


def chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    """A form body of `total` bytes sent without a declared length (chunked)."""
    yield b"username=user1%40example.com&password="
    for _ in range(total // size):
        yield b"x" * size


@pytest.mark.parametrize("declared", [True, False])
def test_an_outsized_body_on_the_public_seed_routes_is_refused_before_it_is_parsed(
        client: TestClient, declared: bool) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    body = b"username=user1%40example.com&password=" + b"x" * 512 * 1024
    answer = (client.post("/api/v1/user/login", headers=form, content=body) if declared
              else client.post("/api/v1/user/login", headers=form, content=chunks(512 * 1024)))
    assert answer.status_code == 413, answer.text
    # A login form of ordinary size is still read.
    assert client.post("/api/v1/user/login", data={"username": "user1", "password": "user1"}).status_code == 200


def test_an_outsized_admin_body_is_refused_before_the_token_is_even_checked(client: TestClient) -> None:
    huge = {"tenant": {"id": "big", "name": "x" * (2 * 1024 * 1024)}}
    assert client.post("/admin/v1/tenants", json=huge).status_code == 413
    assert client.post("/admin/v1/tenants", headers=AUTH, json=huge).status_code == 413
    assert client.post("/admin/v1/tenants", headers=AUTH, json=tenant("normal")).status_code == 201


def test_many_logins_at_once_run_one_bcrypt_at_a_time(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    inside, most, second_entered = 0, 0, threading.Event()
    lock = threading.Lock()
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
            if inside > 1:
                second_entered.set()
        second_entered.wait(0.5)  # long enough for another login to enter, were that allowed
        try:
            return bool(real(password, hashed))
        finally:
            with lock:
                inside -= 1

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    answers: list[int] = []

    def attempt(n: int) -> None:
        form = {"username": f"nobody-{n}@example.com", "password": "guess"}
        answers.append(client.post("/api/v1/user/login", data=form).status_code)

    threads = [threading.Thread(target=attempt, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(answers) == [401] * 4 and most == 1


def test_usage_readings_reuse_one_redis_scan(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    scans: list[str] = []

    async def scan(redis_url: str | None, tenant_id: str) -> int:
        scans.append(tenant_id)
        return 42

    monkeypatch.setattr(usage_totals, "tenant_total_tokens", scan)
    token = access_token(client)
    for _ in range(50):
        me = client.get("/api/v1/user/me", headers={"Authorization": "Bearer " + token})
        assert me.status_code == 200 and me.json()["total_tokens"] == 42
    assert len(scans) < 10  # one per second at most, however often the backend asks


def test_a_revocation_outlives_the_keys_of_a_tenant_created_since_the_service_started(
        config_path: Path, redis_server: str) -> None:
    import redis

    raw = yaml.safe_load(config_path.read_text())
    raw["gateway"]["redis_url"] = redis_server
    config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    three_years = 3 * 365 * 86400
    with TestClient(build_app(config_path, follow=False)) as client:
        long_lived = tenant("long-lived")
        long_lived["tenant"]["limits"]["max_ttl"] = three_years
        assert client.post("/admin/v1/tenants", headers=AUTH, json=long_lived).status_code == 201
        source = client.app.state.admin.source  # type: ignore[attr-defined]
        source.accept(source.load())  # what the service's generation watch does within a second
        revoked = client.post("/admin/v1/revocations", headers=AUTH, json={"tenant": "long-lived", "key_id": "k1"})
        assert revoked.status_code == 200, revoked.text
        assert revoked.json()["marker_ttl_s"] >= three_years
    ledger = redis.Redis.from_url(redis_server)
    try:
        ttls = [ledger.ttl(key) for key in ledger.scan_iter(match="*long-lived*k1*")]
    finally:
        ledger.close()
    assert ttls and min(ttls) >= three_years


@pytest.mark.parametrize("url", ["http://127.0.0.1:9901/quitquitquit", "http://localhost:9300/admin/v1/tenants",
                                 "http://[::1]:9901/healthcheck/fail", "http://[::ffff:127.0.0.1]:9901/quitquitquit",
                                 "http://0.0.0.0:6379/", "http://127.0.0.2:8000/v1/chat/completions",
                                 "http://169.254.169.254/latest/meta-data/", "http://[fe80::1]/x"])
def test_a_callback_aimed_at_the_stacks_own_services_or_metadata_is_refused(client: TestClient, url: str) -> None:
    hooked = tenant("hooked")
    hooked["tenant"]["callback"] = {"url": url}
    hooked["secrets"]["callback"] = HOOK_SECRET
    created = client.post("/admin/v1/tenants", headers=AUTH, json=hooked)
    assert created.status_code == 422 and "callback.url" in created.text, created.text
    assert client.post("/admin/v1/tenants", headers=AUTH, json=tenant("hooked")).status_code == 201
    moved = client.put("/admin/v1/tenants/hooked", headers=AUTH, json=hooked)
    assert moved.status_code == 422 and "callback.url" in moved.text


@pytest.mark.parametrize("url", ["http://127.0.0.1:9000/v1/callback/usage", "https://backend.example/cb",
                                 "http://10.0.0.7:8080/cb"])
def test_a_callback_to_a_backend_is_accepted(client: TestClient, url: str) -> None:
    hooked = tenant("hooked")
    hooked["tenant"]["callback"] = {"url": url}
    hooked["secrets"]["callback"] = HOOK_SECRET
    assert client.post("/admin/v1/tenants", headers=AUTH, json=hooked).status_code == 201


@pytest.mark.parametrize("content", ['{"keys": "not-a-list"}', "[]", '{"keys": [1]}', '"text"', '{"keys": [[]]}'])
def test_a_jwks_file_of_the_wrong_shape_is_a_422_naming_it(client: TestClient, tmp_path: Path, content: str) -> None:
    jwks = tmp_path / "tenant-jwks.json"
    jwks.write_text(content)
    body = {"tenant": {"id": "jwks", "jwks_file": str(jwks), "limits": {"models": ["deepseek-chat"], "max_tokens": 64}}}
    answer = client.post("/admin/v1/tenants", headers=AUTH, json=body)
    assert answer.status_code == 422 and "jwks_file" in answer.text, answer.text


@pytest.mark.parametrize(("change", "named"), [
    ({"upstream": {"api_key_env": "DYNASEAL_TEST_ADMIN_TOKEN"}}, "DYNASEAL_TEST_ADMIN_TOKEN"),
    ({"callback": {"url": "https://receiver.example/cb", "secret_env": "DYNASEAL_DEMO_WEBHOOK_SECRET"}},
     "DYNASEAL_DEMO_WEBHOOK_SECRET"),
    ({"keys": [{"alg": "HS256", "secret_env": "DYNASEAL_DEMO_TENANT_SECRET"}]}, "DYNASEAL_DEMO_TENANT_SECRET"),
    ({"keys": [{"alg": "HS256", "secret_env": "DYNASEAL_ISSUER_SESSION_SECRET"}]}, "DYNASEAL_ISSUER_SESSION_SECRET"),
    ({"keys": [{"alg": "HS256", "secret_env": "DYNASEAL_UPSTREAM_KEY"}]}, "DYNASEAL_UPSTREAM_KEY"),
])
def test_a_store_tenant_cannot_name_a_secret_the_gateway_or_another_tenant_holds(
        client: TestClient, change: dict[str, Any], named: str) -> None:
    body = tenant("borrower")
    body["tenant"].update(change)
    created = client.post("/admin/v1/tenants", headers=AUTH, json=body)
    assert created.status_code == 422 and f"{named}: holds a secret" in created.text, created.text
    assert client.post("/admin/v1/tenants", headers=AUTH, json=tenant("borrower")).status_code == 201
    changed = client.put("/admin/v1/tenants/borrower", headers=AUTH, json=body)
    assert changed.status_code == 422 and f"{named}: holds a secret" in changed.text


def test_a_store_tenant_may_name_the_gateways_own_provider_key(client: TestClient) -> None:
    body = tenant("shared-provider")
    body["tenant"]["upstream"] = {"api_key_env": "DYNASEAL_UPSTREAM_KEY"}
    assert client.post("/admin/v1/tenants", headers=AUTH, json=body).status_code == 201


def test_dynaseal_check_names_a_stored_tenant_that_is_left_out(config_path: Path) -> None:
    from dynaseal_launcher.check import problems

    store = TenantStore(store_url(load_config(config_path)))
    store.put_tenant("bad", {"id": "bad", "keys": [], "limits": {}}, {})
    store.close()
    found, _ = problems(str(config_path))
    assert any(line.startswith("store: stored tenant bad") for line in found), found


def test_a_login_name_no_account_can_have_costs_no_bcrypt_and_no_throttle_entry(
        client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(password: bytes, hashed: bytes) -> bool:
        raise AssertionError("bcrypt ran for a name no account can have")

    monkeypatch.setattr(bcrypt, "checkpw", refuse)
    throttle: Throttle = client.app.state.login_throttle  # type: ignore[attr-defined]
    for n in range(3):
        name = f"{n}" + "n" * 10_000 + "@example.com"
        answer = client.post("/api/v1/user/login", data={"username": name, "password": "guess"})
        assert answer.status_code == 401
        assert throttle.retry_after(f"name:{name}") == 0 and throttle.retry_after(name) == 0
    assert not throttle._attempts  # nothing held for them


def test_secrets_a_backend_keeps_creating_do_not_pile_up_in_the_store(client: TestClient, config_path: Path) -> None:
    token = access_token(client)
    for _ in range(20):
        assert client.post("/api/v1/api_key/create", headers={"Authorization": "Bearer " + token}).status_code == 200
    store = TenantStore(store_url(load_config(config_path)))
    try:
        rows = [s for s in store.snapshot().secrets if s.tenant_id == DEMO and s.purpose == PURPOSE_SEED]
    finally:
        store.close()
    assert len(rows) == 8  # the open ones; the retired 12 can never verify again
    keys = client.get(f"/admin/v1/tenants/{DEMO}", headers=AUTH).json()["tenant"]["keys"]
    assert sum(1 for k in keys if "kid" not in k) == 1 + 8


def test_two_creations_of_one_id_never_merge(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    from admin_api.state import AdminState

    first_secret = "first-creators-seed-secret-0123456789"
    real_check = AdminState.check

    def check_then_lose_the_race(self: AdminState, snapshot: Any) -> Any:
        checked = real_check(self, snapshot)
        # Another request creating the same id lands between this one's check and its write.
        monkeypatch.setattr(AdminState, "check", real_check)
        first = client.post("/admin/v1/tenants", headers=AUTH, json=tenant("raced", seed=first_secret))
        assert first.status_code == 201
        return checked

    monkeypatch.setattr(AdminState, "check", check_then_lose_the_race)
    second = tenant("raced")
    second["tenant"]["limits"]["max_tokens"] = 999
    assert client.post("/admin/v1/tenants", headers=AUTH, json=second).status_code == 409
    stored = client.get("/admin/v1/tenants/raced", headers=AUTH).json()["tenant"]
    assert stored["limits"]["max_tokens"] == 64  # the first creator's tenant, unchanged
    assert sum(1 for k in stored["keys"] if "kid" not in k) == 1  # and only its secret
