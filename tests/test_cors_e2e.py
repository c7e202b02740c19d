"""CORS through the real Envoy + authz + Redis (only the LLM is a mock): Envoy answers preflights for the
union of the tenants' origins without asking authz or the provider; authz checks the request itself
against the key's tenant; the page can read the gateway's ids and refusals, and streams cross-origin."""

from __future__ import annotations

import re

import httpx
import pytest
from conftest import DEMO_TENANT

from dynaseal.config import DynasealConfig
from dynaseal.keys.mint import HolderKey, SigningKey, mint

pytestmark = pytest.mark.integration
BODY = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "count to three"}], "max_tokens": 20}
PREFLIGHT = {"access-control-request-method": "POST",
             "access-control-request-headers": "authorization,content-type,dpop"}


@pytest.fixture(scope="module")
def gw(cfg: DynasealConfig, stack: object) -> str:
    return f"http://127.0.0.1:{cfg.gateway.ports.envoy}/v1/chat/completions"


@pytest.fixture(scope="module")
def page(cfg: DynasealConfig) -> str:
    """The demo page's origin (the issuer's), which the test config allows."""
    return f"http://127.0.0.1:{cfg.gateway.ports.issuer}"


def authz_decisions(cfg: DynasealConfig) -> float:
    """Every Check authz decided so far (its Prometheus counter)."""
    text = httpx.get(f"http://127.0.0.1:{cfg.gateway.ports.authz_metrics}/metrics").text
    return sum(float(m) for m in re.findall(r"^dynaseal_authz_decisions_total\{[^}]*\} ([0-9.e+]+)$", text, re.M))


def mock_requests(cfg: DynasealConfig) -> list[object]:
    reply: list[object] = httpx.get(f"http://127.0.0.1:{cfg.local.mock_upstream_port}/_mock/requests").json()
    return reply


def key(issuer_key: SigningKey, **claims: object) -> str:
    return mint(issuer_key, tenant=DEMO_TENANT, models=["deepseek-chat"], max_tokens=20, ttl=300,
                **claims)  # type: ignore[arg-type]


def test_the_preflight_is_answered_by_envoy_alone(cfg: DynasealConfig, gw: str, page: str) -> None:
    httpx.delete(f"http://127.0.0.1:{cfg.local.mock_upstream_port}/_mock/requests")
    before = authz_decisions(cfg)
    for origin in (page, "https://app.pages.example"):
        reply = httpx.options(gw, headers={"origin": origin, **PREFLIGHT})
        assert reply.status_code == 200, reply.text
        assert reply.headers["access-control-allow-origin"] == origin
        allowed = reply.headers["access-control-allow-headers"].replace(" ", "").split(",")
        assert {"authorization", "dpop", "content-type"} <= set(allowed)
        assert "POST" in reply.headers["access-control-allow-methods"]
        assert "access-control-allow-credentials" not in reply.headers  # no credentials mode
    assert authz_decisions(cfg) == before
    assert mock_requests(cfg) == []


@pytest.mark.parametrize("origin", ["https://evil.example", "null", "http://localhost:9000",
                                    "https://pages.example", "https://app.pages.example.evil.test"])
def test_a_disallowed_origins_preflight_is_not_allowed(cfg: DynasealConfig, gw: str, origin: str) -> None:
    """Envoy answers it too, without Access-Control-Allow-Origin: the browser sends nothing more."""
    before = authz_decisions(cfg)
    reply = httpx.options(gw, headers={"origin": origin, **PREFLIGHT})
    assert reply.status_code == 200
    assert "access-control-allow-origin" not in reply.headers, reply.headers
    assert authz_decisions(cfg) == before


def test_other_options_requests_stop_at_envoy(cfg: DynasealConfig, gw: str) -> None:
    before = authz_decisions(cfg)
    assert httpx.options(gw).status_code == 204
    assert httpx.options(gw.replace("/v1/chat/completions", "/anything")).status_code == 204
    assert authz_decisions(cfg) == before


def test_the_request_from_the_page_is_served_and_readable(gw: str, page: str, issuer_key: SigningKey) -> None:
    reply = httpx.post(gw, headers={"origin": page, "authorization": f"Bearer {key(issuer_key)}"}, json=BODY)
    assert reply.status_code == 200, reply.text
    assert reply.headers["access-control-allow-origin"] == page
    exposed = reply.headers["access-control-expose-headers"].replace(" ", "").split(",")
    assert {"x-dynaseal-request-id", "retry-after"} <= set(exposed)
    assert reply.headers["x-dynaseal-request-id"]


def test_a_refusal_is_readable_by_the_page(gw: str, page: str) -> None:
    reply = httpx.post(gw, headers={"origin": page, "authorization": "Bearer not-a-key"}, json=BODY)
    assert (reply.status_code, reply.json()["error"]["code"]) == (401, "invalid_api_key")
    assert reply.headers["access-control-allow-origin"] == page


def test_another_tenants_page_is_refused_by_authz(gw: str, issuer_key: SigningKey) -> None:
    """Allowed at the edge (some tenant's), refused for a key whose tenant does not allow it."""
    reply = httpx.post(gw, headers={"origin": "https://evil.example", "authorization": f"Bearer {key(issuer_key)}"},
                       json=BODY)
    assert (reply.status_code, reply.json()["error"]["code"]) == (403, "origin_not_allowed")
    assert "access-control-allow-origin" not in reply.headers


def test_a_dpop_stream_works_cross_origin(gw: str, page: str, issuer_key: SigningKey) -> None:
    holder = HolderKey.generate("ES256")
    token = key(issuer_key, cnf=holder.cnf_jkt())
    headers = {"origin": page, **holder.headers(token, "POST", gw)}
    with httpx.stream("POST", gw, headers=headers, json={**BODY, "stream": True}, timeout=30) as reply:
        assert reply.status_code == 200
        assert reply.headers["access-control-allow-origin"] == page
        assert reply.headers["content-type"].startswith("text/event-stream")
        events = [line for line in reply.iter_lines() if line.startswith("data:")]
    assert events[-1] == "data: [DONE]" and len(events) > 2
