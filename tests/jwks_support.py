"""A JWKS server for tests (its document and its behaviour scriptable) and the helpers around it."""

from __future__ import annotations

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
from prometheus_client import REGISTRY

from dynaseal.config import DynasealConfig
from dynaseal.keys.mint import SigningKey, mint
from dynaseal.policy.authorizer import Authorizer, AuthRequest

BODY = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5})


class JwksServer:
    """A local JWKS endpoint whose answer the test changes: document, status, size, hang, redirect."""

    def __init__(self) -> None:
        self.document: dict[str, object] = {"keys": []}
        self.status = 200
        self.fetches = 0
        self.endless = False  # stream a body that never ends, without content-length
        self.redirect_to: str | None = None
        self.cache_control: str | None = None
        self.hang = threading.Event()  # set: requests block until `release` is set
        self.release = threading.Event()
        self.hanging = threading.Event()  # set by the handler once a request is blocked
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                if outer.hang.is_set():
                    outer.hanging.set()
                    outer.release.wait(30)
                if outer.redirect_to is not None:
                    self.send_response(302)
                    self.send_header("location", outer.redirect_to)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                if outer.endless:
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.end_headers()
                    try:
                        self.wfile.write(b'{"keys": [')
                        while True:
                            self.wfile.write(b" " * 4096)
                    except OSError:  # the client hung up, as it should
                        return
                body = json.dumps(outer.document).encode()
                self.send_response(outer.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                if outer.cache_control:
                    self.send_header("cache-control", outer.cache_control)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.url = f"{self.base}/.well-known/jwks.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def remote_config(url: str, **tenant: object) -> DynasealConfig:
    return DynasealConfig.model_validate({"tenants": [{"id": "remote", "jwks_url": url,
                                                      "limits": {"models": ["m"]}, **tenant}]})


def token(key: SigningKey) -> str:
    return mint(key, tenant="remote", models=["m"], max_tokens=5, ttl=60)


def request(tok: str) -> AuthRequest:
    return AuthRequest("POST", "/v1/chat/completions", {"authorization": f"Bearer {tok}"}, BODY)


def decide(authorizer: Authorizer, tok: str) -> str:
    return asyncio.run(authorizer.decide(request(tok))).code


def failures(tenant: str) -> float:
    return REGISTRY.get_sample_value("dynaseal_jwks_refreshes_total",
                                     {"tenant": tenant, "result": "failed"}) or 0.0

