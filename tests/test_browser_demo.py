"""The demo page in a real headless Chromium against the real stack (Envoy, authz, Redis, Kafka, shipper,
consumer, issuer; only the LLM is a mock). The page is served by the issuer, another origin than the
gateway's: every gateway call is cross-origin, and needs a passing preflight (Authorization and DPoP are
not simple headers). Screenshots go to .dynaseal/artifacts/browser/ (or $DYNASEAL_ARTIFACTS)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from browser_support import launched_chromium, recorded_page

from dynaseal.config import DynasealConfig

pytestmark = [pytest.mark.integration, pytest.mark.browser]
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright (Python) is not installed")
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with launched_chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    with recorded_page(browser, request.node.name, TIMEOUT_MS) as opened:
        yield opened


def issuer(cfg: DynasealConfig, host: str = "127.0.0.1") -> str:
    return f"http://{host}:{cfg.gateway.ports.issuer}"


def text(page: Any, testid: str) -> str:
    return str(page.get_by_test_id(testid).text_content() or "")


def wait_state(page: Any, testid: str, state: str) -> str:
    page.wait_for_selector(f'[data-testid="{testid}"][data-state="{state}"]')
    return text(page, testid)


def log_in(page: Any, origin: str) -> None:
    page.goto(f"{origin}/demo/")
    page.get_by_test_id("login").click()
    wait_state(page, "key", "ok")


def test_the_page_streams_with_dpop_and_shows_the_callbacks_usage_and_cost(cfg: DynasealConfig, stack: object,
                                                                           page: Any) -> None:
    # Chromium reports its CORS preflights on the DevTools protocol, as OPTIONS requests of their own.
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    sent: dict[str, dict[str, Any]] = {}
    cdp.on("Network.requestWillBeSent", lambda e: sent.setdefault(e["requestId"], e))
    answers: dict[str, int] = {}
    cdp.on("Network.responseReceived", lambda e: answers.__setitem__(e["requestId"], e["response"]["status"]))
    log_in(page, issuer(cfg))
    holder = text(page, "holder")
    assert "extractable: false" in holder, holder
    assert "bound to cnf.jwk" in text(page, "key")
    page.get_by_test_id("stream").click()
    output = wait_state(page, "output", "ok")
    assert output.strip(), "the stream gave no text"
    request_id = wait_state(page, "request-id", "ok")
    assert re.fullmatch(r"[0-9a-f-]{36}", request_id)
    usage = wait_state(page, "usage", "ok")
    assert re.match(r"\d+ tokens \(prompt \d+, completion \d+\)", usage), usage
    gw = f"http://127.0.0.1:{cfg.gateway.ports.envoy}/v1/chat/completions"
    preflights = [e for e in sent.values() if e["request"]["url"] == gw and e["request"]["method"] == "OPTIONS"]
    assert preflights, [(e["request"]["method"], e["request"]["url"]) for e in sent.values()]
    assert {answers.get(e["requestId"]) for e in preflights} == {200}
    cost = wait_state(page, "cost", "ok")
    assert re.fullmatch(r"\d+\.\d+ USD", cost), cost


def test_a_one_use_child_key_serves_its_sub_agent_once(cfg: DynasealConfig, stack: object, page: Any) -> None:
    log_in(page, issuer(cfg))
    page.get_by_test_id("child").click()
    assert wait_state(page, "child-first", "ok").startswith("200:")
    assert wait_state(page, "child-second", "refused") == "KeyExhaustedError: 429 key_exhausted"


def test_the_key_copied_out_of_the_page_is_refused(cfg: DynasealConfig, stack: object, page: Any) -> None:
    log_in(page, issuer(cfg))
    page.get_by_test_id("lifted").click()
    assert wait_state(page, "lifted-result", "refused") == "DpopProofError: 401 invalid_dpop_proof"
    # The same key in curl's hands (here httpx), with the command the page printed.
    key = re.search(r"Bearer ([A-Za-z0-9_.-]+)", text(page, "curl"))
    assert key is not None
    gw = f"http://127.0.0.1:{cfg.gateway.ports.envoy}/v1/chat/completions"
    body = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    for scheme in ("Bearer", "DPoP"):
        reply = httpx.post(gw, headers={"authorization": f"{scheme} {key.group(1)}"}, json=body, timeout=30)
        assert (reply.status_code, reply.json()["error"]["code"]) == (401, "invalid_dpop_proof")


def test_the_holder_key_survives_a_reload_in_indexeddb(cfg: DynasealConfig, stack: object, page: Any) -> None:
    log_in(page, issuer(cfg))
    first = text(page, "holder")
    page.reload()
    page.get_by_test_id("login").click()
    wait_state(page, "key", "ok")
    assert text(page, "holder") == first


def test_a_page_on_a_disallowed_origin_cannot_call_the_gateway(cfg: DynasealConfig, stack: object,
                                                               page: Any) -> None:
    """localhost is another origin than 127.0.0.1: logging in works (same origin), the gateway refuses it."""
    log_in(page, issuer(cfg, "localhost"))
    page.get_by_test_id("stream").click()
    output = wait_state(page, "output", "refused")
    assert "Failed to fetch" in output, output  # the preflight found no Access-Control-Allow-Origin
