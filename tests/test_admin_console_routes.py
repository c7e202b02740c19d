"""The admin API's usage, refusals, DLQ and revocation routes, in process, against a SQLite usage store; the
broker and Redis here are addresses nothing listens on (the routes must fail closed with a 503)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import free_ports
from fastapi.testclient import TestClient
from pydantic import SecretStr
from test_usage_store import T0, event

from admin_api.app import create_app
from admin_api.console import console_routers
from admin_api.console_context import CONSOLE_DIR, ConsoleContext, install_console
from dynaseal.usage_store.recording import record
from dynaseal.usage_store.schema import make_engine

TOKEN = "admin-token-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
METRICS = """# HELP dynaseal_authz_decisions_total Check decisions
# TYPE dynaseal_authz_decisions_total counter
dynaseal_authz_decisions_total{code="ok",result="allow"} 40.0
dynaseal_authz_decisions_total{code="model_not_allowed",result="deny"} 3.0
dynaseal_authz_decisions_total{code="invalid_api_key",result="deny"} 2.0
dynaseal_authz_decisions_total{code="authz_unavailable",result="deny"} 1.0
"""


@pytest.fixture(scope="module")
def authz_metrics() -> Iterator[str]:
    """A stand-in for authz's /metrics (the text format it serves)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = METRICS.encode()
            self.send_response(200)
            self.send_header("content-type", "text/plain; version=0.0.4")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    server.shutdown()
    server.server_close()


@pytest.fixture
def client(tmp_path: Path, authz_metrics: str) -> Iterator[TestClient]:
    dead_kafka, dead_redis, dead_authz = free_ports(3)
    context = ConsoleContext(make_engine(f"sqlite:///{tmp_path / 'usage.db'}"), f"127.0.0.1:{dead_kafka}",
                             f"redis://127.0.0.1:{dead_redis}/0",
                             (authz_metrics, f"http://127.0.0.1:{dead_authz}/metrics"), {"t1": 3600})
    record(context.engine, [event("a", at_s=T0 + 5), event("b", at_s=T0 + 70, model="m2", total=20, cost="0.0003"),
                            event("c", at_s=T0 + 3605, tenant="t2", cost=None),
                            event("x", content_rule="no-secrets", cost=None, total=0)])
    app = create_app(SecretStr(TOKEN), console_routers())
    install_console(app, context)
    with TestClient(app) as test_client:
        yield test_client


WINDOW = {"since": "2026-05-28T00:00:00Z", "until": "2026-05-28T02:00:00Z"}


@pytest.mark.parametrize(("method", "path"), [("GET", "/admin/v1/usage"), ("GET", "/admin/v1/refusals"),
                                              ("GET", "/admin/v1/dlq"), ("POST", "/admin/v1/dlq/0:1/replay"),
                                              ("POST", "/admin/v1/revocations")])
@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer "])
def test_every_route_refuses_without_the_admin_token(client: TestClient, method: str, path: str,
                                                     authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    reply = client.request(method, path, headers=headers, json={"tenant": "t1", "key_id": "k"})
    assert reply.status_code == 401 and TOKEN not in reply.text


def test_usage_per_bucket_and_group_with_totals(client: TestClient) -> None:
    reply = client.get("/admin/v1/usage", params={**WINDOW, "bucket": "minute"}, headers=AUTH)
    assert reply.status_code == 200
    body = reply.json()
    assert [(r["bucket"], r["tenant"], r["model"], r["total_tokens"], r["cost"]) for r in body["series"]] == [
        ("2026-05-28T00:00:00Z", "t1", "m1", 10, {"amount": "0.0001", "currency": "USD"}),
        ("2026-05-28T00:01:00Z", "t1", "m2", 20, {"amount": "0.0003", "currency": "USD"}),
        ("2026-05-28T01:00:00Z", "t2", "m1", 10, None)]
    assert body["totals"] == [
        {"tenant": "t1", "requests": 2, "total_tokens": 30, "cost": {"amount": "0.0004", "currency": "USD"}},
        {"tenant": "t2", "requests": 1, "total_tokens": 10, "cost": None}]
    hourly = client.get("/admin/v1/usage", params={**WINDOW, "tenant": "t1", "group_by": "tenant"}, headers=AUTH)
    assert [(r["bucket"], r["requests"]) for r in hourly.json()["series"]] == [("2026-05-28T00:00:00Z", 2)]


@pytest.mark.parametrize("params", [
    {"bucket": "week"}, {"bucket": "minute", "since": "2020-01-01T00:00:00Z"},
    {"since": "2026-05-28T02:00:00Z", "until": "2026-05-28T01:00:00Z"}, {"since": "yesterday"},
    {"group_by": "tenant,tenant"}, {"group_by": "sub"}, {"group_by": ""}, {"tenant": ""}, {"tenant": "t" * 200},
    {"model": "m\x00"}])
def test_bad_usage_queries_are_a_clear_4xx(client: TestClient, params: dict[str, str]) -> None:
    reply = client.get("/admin/v1/usage", params=params, headers=AUTH)
    assert reply.status_code in (400, 422) or (reply.status_code == 200 and reply.json()["series"] == []), reply.text


def test_refusals_come_from_authz_counters_and_content_rules(client: TestClient, authz_metrics: str) -> None:
    body = client.get("/admin/v1/refusals", params={"since": "2026-05-27T00:00:00Z"}, headers=AUTH).json()
    assert body["authz"]["codes"] == [{"code": "authz_unavailable", "count": 1},
                                      {"code": "invalid_api_key", "count": 2},
                                      {"code": "model_not_allowed", "count": 3}]
    assert len(body["authz"]["unreachable"]) == 1 and authz_metrics not in body["authz"]["unreachable"]
    assert body["content_rules"] == [{"tenant": "t1", "code": "content_blocked", "count": 1}]


def test_without_a_broker_or_redis_the_operations_fail_closed(client: TestClient) -> None:
    assert client.get("/admin/v1/dlq", headers=AUTH).status_code == 503
    assert client.post("/admin/v1/dlq/0:3/replay", headers=AUTH).status_code == 503
    reply = client.post("/admin/v1/revocations", json={"tenant": "t1", "key_id": "k-1"}, headers=AUTH)
    assert reply.status_code == 503 and "not revoked" not in reply.text and "nothing was changed" in reply.text


@pytest.mark.parametrize("entry", ["0", "x:1", "0:-1", "1:2:3", "0:99999999999999999999", "%20"])
def test_a_malformed_dlq_entry_id_is_a_400(client: TestClient, entry: str) -> None:
    assert client.post(f"/admin/v1/dlq/{entry}/replay", headers=AUTH).status_code in (400, 404)


@pytest.mark.parametrize("body", [{}, {"tenant": "t1"}, {"tenant": "t1", "key_id": ""},
                                  {"tenant": "t1", "key_id": "a b"},
                                  {"tenant": "t1", "key_id": "k\n"}, {"tenant": "t1", "key_id": "k" * 129},
                                  {"tenant": "t1", "key_id": "k", "ancestors": ["r"] * 17},
                                  {"tenant": "t1", "key_id": "k", "ancestors": "root"}, {"tenant": 5, "key_id": "k"}])
def test_a_bad_revocation_is_a_422(client: TestClient, body: dict[str, object]) -> None:
    assert client.post("/admin/v1/revocations", json=body, headers=AUTH).status_code == 422


def test_the_console_is_served_and_loads_nothing_from_elsewhere(client: TestClient) -> None:
    page = client.get("/console/")
    assert page.status_code == 200 and "Dynaseal console" in page.text
    for name in ("console.js", "charts.js", "console.css"):
        assert client.get(f"/console/{name}").status_code == 200
    for path in CONSOLE_DIR.iterdir():
        text = path.read_text()
        # The SVG namespace is an identifier, not a fetch.
        assert "https://" not in text and "http://" not in text.replace("http://www.w3.org/2000/svg", ""), path
        assert "innerHTML" not in text, path  # what the API returns is set as text, never as markup
