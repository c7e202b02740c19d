"""issuer_api behind (or not behind) a proxy: uvicorn, run with the service's own settings, believes
X-Forwarded-For only from `issuer.trusted_proxies`, so rotating it cannot dodge the login throttle."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from test_issuer_support import issuer_config

from dynaseal.config import DynasealConfig
from issuer_api.__main__ import server_options
from issuer_api.app import create_app


@contextmanager
def running_issuer(cfg: DynasealConfig) -> Iterator[str]:
    """The issuer served by a real uvicorn on a loopback port, with `server_options(cfg)`."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(cfg), **server_options(cfg)))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if server.started:
                break
            thread.join(0.01)
        assert server.started
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def with_proxies(cfg: DynasealConfig, proxies: list[str]) -> DynasealConfig:
    assert cfg.issuer is not None
    return cfg.model_copy(update={"issuer": cfg.issuer.model_copy(update={"trusted_proxies": tuple(proxies)})})


def attempt(base: str, password: str, forwarded_for: str) -> int:
    response = httpx.post(f"{base}/user/login", data={"username": "user1", "password": password},
                          headers={"x-forwarded-for": forwarded_for})
    return response.status_code


def test_rotating_x_forwarded_for_does_not_bypass_the_limiter(tmp_path: Path) -> None:
    with running_issuer(issuer_config(tmp_path)) as base:
        for i in range(5):
            assert attempt(base, "wrong", f"10.0.0.{i}") == 401
        assert attempt(base, "user1", "10.9.9.9") == 429  # a "new" address is still the same peer


def test_a_trusted_proxys_x_forwarded_for_is_honoured(tmp_path: Path) -> None:
    with running_issuer(with_proxies(issuer_config(tmp_path), ["127.0.0.1/32"])) as base:
        for _ in range(5):
            assert attempt(base, "wrong", "10.0.0.1") == 401
        assert attempt(base, "user1", "10.0.0.1") == 429  # that client is throttled
        assert attempt(base, "user1", "10.0.0.2") == 200  # another client behind the proxy is not


@pytest.mark.parametrize("proxy", ["*", "localhost", "10.0.0.0/33"])
def test_trusted_proxies_must_be_addresses_or_networks(tmp_path: Path, proxy: str) -> None:
    raw = issuer_config(tmp_path).model_dump()
    raw["issuer"]["trusted_proxies"] = [proxy]
    with pytest.raises(ValueError, match="trusted_proxies"):
        DynasealConfig.model_validate(raw)


def test_without_trusted_proxies_forwarded_headers_are_off(tmp_path: Path) -> None:
    assert server_options(issuer_config(tmp_path))["proxy_headers"] is False
    trusting = server_options(with_proxies(issuer_config(tmp_path), ["10.1.0.0/16", "::1"]))
    assert trusting["proxy_headers"] is True and trusting["forwarded_allow_ips"] == ["10.1.0.0/16", "::1"]
