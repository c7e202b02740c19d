"""Tenant keys from a jwks_url: fetched at load, refreshed once on an unknown kid, rate-limited."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest

from dynaseal.authorizer import Authorizer, AuthRequest
from dynaseal.config import DynasealConfig
from dynaseal.keys import SigningKey, mint
from dynaseal.tenants import build_registry

BODY = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5})


class JwksServer:
    """A local JWKS endpoint whose document the test changes, counting fetches."""

    def __init__(self) -> None:
        self.document: dict[str, object] = {"keys": []}
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                body = json.dumps(outer.document).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    server = JwksServer()
    yield server
    server.server.shutdown()


def decide(authorizer: Authorizer, token: str) -> str:
    request = AuthRequest("POST", "/v1/chat/completions", {"authorization": f"Bearer {token}"}, BODY)
    return asyncio.run(authorizer.decide(request)).code


def test_rotation_at_the_jwks_url_is_picked_up_once(jwks: JwksServer) -> None:
    first, second = SigningKey.generate("r-1"), SigningKey.generate("r-2")
    jwks.document = {"keys": [first.public_jwk()]}
    cfg = DynasealConfig.model_validate({"tenants": [{"id": "remote", "jwks_url": jwks.url,
                                                      "limits": {"models": ["m"]}}]})
    authorizer = Authorizer(build_registry(cfg))
    assert jwks.fetches == 1
    assert decide(authorizer, mint(first, tenant="remote", models=["m"], max_tokens=5, ttl=60)) == "ok"

    jwks.document = {"keys": [first.public_jwk(), second.public_jwk()]}  # the tenant rotates
    assert decide(authorizer, mint(second, tenant="remote", models=["m"], max_tokens=5, ttl=60)) == "ok"
    assert jwks.fetches == 2

    forged = SigningKey.generate("r-3")  # unknown kids: at most one refresh per interval
    for _ in range(5):
        assert decide(authorizer, mint(forged, tenant="remote", models=["m"], max_tokens=5, ttl=60)) == \
            "invalid_api_key"
    assert jwks.fetches == 2


def test_unreachable_jwks_at_load_refuses_until_it_answers() -> None:
    cfg = DynasealConfig.model_validate({"tenants": [{"id": "remote", "jwks_url": "http://127.0.0.1:1/jwks",
                                                      "limits": {"models": ["m"]}}]})
    authorizer = Authorizer(build_registry(cfg))
    key = SigningKey.generate("r-9")
    assert decide(authorizer, mint(key, tenant="remote", models=["m"], max_tokens=5, ttl=60)) == "invalid_api_key"
