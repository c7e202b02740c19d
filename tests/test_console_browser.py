"""The operator's console in a real headless Chromium against the real stack (Envoy, authz, Redis, Kafka,
shipper, callback consumer, usage recorder, issuer; only the LLM is a mock), the admin API serving it:
log in, see the chart of traffic just sent, replay a DLQ entry, revoke a key. Screenshots go to
.dynaseal/artifacts/browser/console-*.png (or $DYNASEAL_ARTIFACTS)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from browser_support import artifacts_dir, launched_chromium, recorded_page
from conftest import DEMO_TENANT, free_ports
from pipeline_harness import complete, new_key, wait_until
from pydantic import SecretStr

from admin_api.app import create_app
from admin_api.console import add_console, console_routers
from callback_consumer.dlq import dlq_headers
from dynaseal.config import DynasealConfig
from dynaseal.keys.mint import SigningKey
from dynaseal.pb import UsageEvent
from dynaseal.runtime.views import load_runtime
from dynaseal.usage import kafka_io

pytestmark = [pytest.mark.integration, pytest.mark.browser]
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright (Python) is not installed")
TIMEOUT_MS = 60_000
TOKEN = f"console-admin-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def admin(cfg: DynasealConfig, config_path: Path, stack: object) -> Iterator[str]:
    """The admin API with the console's rooms, on the stack's store, broker and Redis; its base URL."""
    app = create_app(SecretStr(TOKEN), console_routers())
    add_console(app, load_runtime(config_path))
    port = free_ports(1)[0]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    assert wait_until_ok(f"{base}/healthz")
    yield base
    server.should_exit = True
    thread.join(10)


def wait_until_ok(url: str) -> bool:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with launched_chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    viewport = {"width": 1200, "height": 900}
    with recorded_page(browser, f"console-{request.node.name}", TIMEOUT_MS, viewport=viewport) as opened:
        yield opened


def log_in(page: Any, admin: str, token: str = TOKEN) -> None:
    page.goto(f"{admin}/console/")
    page.get_by_test_id("token").fill(token)
    page.get_by_test_id("login-submit").click()


def wait_state(page: Any, testid: str, state: str) -> str:
    page.wait_for_selector(f'[data-testid="{testid}"][data-state="{state}"]')
    return str(page.get_by_test_id(testid).text_content() or "")


def stored_callbacks(cfg: DynasealConfig, jti: str) -> list[dict[str, Any]]:
    """The callbacks the bundled issuer (the demo tenant's backend) stored for a key."""
    issuer = f"http://127.0.0.1:{cfg.gateway.ports.issuer}"
    login = httpx.post(f"{issuer}/user/login", data={"username": "user1", "password": "user1"}, timeout=10)
    login.raise_for_status()
    page = httpx.get(f"{issuer}/usage", params={"jti": jti}, timeout=10,
                     headers={"Authorization": f"Bearer {login.json()['access_token']}"})
    page.raise_for_status()
    return list(page.json()["items"])


def test_a_wrong_token_is_refused_and_nothing_is_shown(page: Any, admin: str) -> None:
    log_in(page, admin, "not-the-token")
    # A locator wait runs in Playwright's own world; a wait_for_function string would be an eval in the
    # page's, which the console's Content-Security-Policy (script-src 'self') rightly refuses.
    page.get_by_test_id("login-error").filter(has_text="refused").wait_for()
    assert "refused" in str(page.get_by_test_id("login-error").text_content())
    assert page.locator("#nav").is_hidden() and page.evaluate("sessionStorage.length") == 0


def test_log_in_and_see_the_chart_of_traffic_just_sent(page: Any, admin: str, cfg: DynasealConfig,
                                                       issuer_key: SigningKey) -> None:
    key, jti = new_key(issuer_key)
    tokens = sum(complete(cfg, key) for _ in range(3))
    headers = {"Authorization": f"Bearer {TOKEN}"}

    def recorded() -> bool:
        reply = httpx.get(f"{admin}/admin/v1/usage", params={"key_id": jti, "bucket": "minute"}, headers=headers)
        return bool(sum(row["total_tokens"] for row in reply.json()["series"]) == tokens)

    wait_until(recorded, 60, "the usage recorder to store the requests just sent")
    log_in(page, admin)
    page.get_by_role("button", name="Usage and cost").click()
    page.get_by_test_id("usage-bucket").select_option("minute")
    page.locator("#usage-form select[name=group_by]").select_option("key")
    page.get_by_test_id("usage-refresh").click()
    assert wait_state(page, "usage-status", "ready").startswith(tuple(f"{n} request(s)" for n in range(3, 10_000)))
    bar = page.locator(f'[data-testid="usage-chart"] rect[data-series="{jti}"]')
    bar.first.wait_for()
    assert sum(float(bar.nth(i).get_attribute("data-value")) for i in range(bar.count())) == tokens
    assert page.locator(f'[data-testid="cost-chart"] rect[data-series="{jti}"]').count() >= 1  # deepseek-chat: priced
    # The token stays in this tab only, and the default view per tenant and model shows the demo tenant.
    assert page.evaluate("sessionStorage.getItem('dynaseal.adminToken')") == TOKEN
    assert page.evaluate("localStorage.length") == 0
    page.locator("#usage-form select[name=group_by]").select_option("tenant,model")
    page.get_by_test_id("usage-refresh").click()
    wait_state(page, "usage-status", "ready")
    assert page.locator(f'[data-testid="usage-chart"] rect[data-series="{DEMO_TENANT} / deepseek-chat"]').count()
    page.screenshot(path=str(artifacts_dir() / "console-usage-chart.png"), full_page=True)
    page.get_by_role("button", name="Tenants").click()
    wait_state(page, "tenants-status", "absent")  # this admin API has no tenant routes: said, not an error
    page.get_by_role("button", name="Refusals").click()
    wait_state(page, "refusals-status", "ready")
    assert int(page.get_by_test_id("refusals-chart").get_attribute("data-bars") or 0) >= 0


def test_tenants_and_their_settings_as_the_tenant_routes_return_them(page: Any, admin: str) -> None:
    # The tenant routes live in another room of the admin API: their answer's shape, served here.
    listing = {"generation": 7, "tenants": [
        {"id": DEMO_TENANT, "source": "file", "disabled": False, "generation": 7,
         "tenant": {"id": DEMO_TENANT, "name": "Demo <b>tenant</b>", "limits": {"models": ["deepseek-chat"]}}},
        {"id": "acme", "source": "store", "disabled": True, "generation": 7, "tenant": {"id": "acme"}}]}
    page.route("**/admin/v1/tenants", lambda route: route.fulfill(json=listing))
    log_in(page, admin)
    page.get_by_role("button", name="Tenants").click()
    assert wait_state(page, "tenants-status", "ready") == "2 tenant(s)"
    demo = page.locator(f'[data-testid="tenants-list"] details[data-tenant="{DEMO_TENANT}"]')
    assert demo.locator("summary").text_content() == f"{DEMO_TENANT} · Demo <b>tenant</b> · from file"
    demo.locator("summary").click()
    assert '"deepseek-chat"' in str(demo.locator("pre").text_content())
    assert page.locator('[data-testid="tenants-list"] b').count() == 0  # shown as text, never as markup
    assert "disabled" in str(page.locator('details[data-tenant="acme"] summary').text_content())


def test_replay_a_dlq_entry_from_the_console(page: Any, admin: str, cfg: DynasealConfig, config_path: Path) -> None:
    jti, request_id = f"dlq-{uuid.uuid4().hex[:10]}", str(uuid.uuid4())
    event = UsageEvent(request_id=request_id, tenant=DEMO_TENANT, jti=jti, event_id=jti, model="deepseek-chat",
                       status=200, prompt_tokens=9, completion_tokens=3, total_tokens=12, reserved=40,
                       usage_source="upstream", started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       cost="0.00000573", currency="USD", cost_micros=6, shipped_at_ms=int(time.time() * 1000))
    bootstrap = load_runtime(config_path).kafka.value
    producer = kafka_io.new_producer(bootstrap, "test-dlq-writer", linger_ms=0)
    try:  # as the consumer dead-letters a callback its receiver refused
        producer.send(kafka_io.DLQ_TOPIC, key=jti.encode(), value=event.SerializeToString(),
                      headers=[(k, v.encode()) for k, v in dlq_headers("rejected:http_400", 400, 1,
                                                                       "dynaseal.usage.v1/0/7").items()]).get(10)
    finally:
        kafka_io.close_quietly(producer)
    assert stored_callbacks(cfg, jti) == []
    log_in(page, admin)
    page.get_by_role("button", name="DLQ").click()
    wait_state(page, "dlq-status", "ready")
    page.locator('[data-testid="dlq-reasons"] button[data-reason="rejected:http_400"]').click()
    wait_state(page, "dlq-status", "ready")
    row = page.locator(f'[data-testid="dlq-entries"] tr:has(td:text-is("{request_id}"))')
    entry = row.get_attribute("data-entry")
    row.get_by_role("button", name="Replay").click()
    assert request_id in wait_state(page, "dlq-status", "replayed")
    wait_until(lambda: len(stored_callbacks(cfg, jti)) == 1, 60, "the replayed callback at the tenant's backend")
    (stored,) = stored_callbacks(cfg, jti)
    assert stored["tokens"] == 12 and stored["model"] == "deepseek-chat" and stored["webhook_id"] == request_id
    # Once per entry: listed as replayed, and a second replay is refused.
    page.get_by_role("button", name="DLQ").click()
    page.wait_for_selector(f'[data-testid="replayed-{entry}"]')
    again = httpx.post(f"{admin}/admin/v1/dlq/{entry}/replay", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert again.status_code == 409


def test_revoke_a_key_from_the_console(page: Any, admin: str, cfg: DynasealConfig, issuer_key: SigningKey) -> None:
    key, jti = new_key(issuer_key)
    assert complete(cfg, key) > 0
    log_in(page, admin)
    page.get_by_role("button", name="Revoke a key").click()
    page.get_by_test_id("revoke-tenant").fill(DEMO_TENANT)
    page.get_by_test_id("revoke-key").fill(jti)
    page.get_by_test_id("revoke-submit").click()
    assert jti in wait_state(page, "revoke-status", "revoked")
    with pytest.raises(openai.AuthenticationError) as refused:
        complete(cfg, key)
    assert refused.value.code == "revoked_key"
    other, _ = new_key(issuer_key)
    assert complete(cfg, other) > 0  # only that key

