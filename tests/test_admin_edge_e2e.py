"""The gateway's port as an outsider sees it on the real stack: only the seed's three registration routes
reach the admin service, whatever the path's spelling, and their bodies are bounded."""

from __future__ import annotations

import http.client

import pytest

from dynaseal.config import DynasealConfig, config_environment

pytestmark = pytest.mark.integration

# Spellings a path normaliser somewhere between Envoy and the admin service might read as an admin path.
TRICKS = ["/admin/v1/tenants", "//admin/v1/tenants", "/admin//v1/tenants", "/%61dmin/v1/tenants",
          "/admin%2Fv1%2Ftenants", "/ADMIN/v1/tenants", "/admin/v1/tenants/", "/admin/v1/tenants.",
          "/api/v1/user/me/../../../admin/v1/tenants", "/api/v1/user/login/..%2F..%2F..%2Fadmin/v1/tenants",
          "/api/v1/../../admin/v1/status", "/./admin/v1/status", "/console/", "/console/index.html",
          "/docs", "/openapi.json", "/healthz", "/api/v1/user/me%2F..%2F..%2F..%2Fadmin%2Fv1%2Ftenants"]


def _raw(port: int, method: str, path: str, headers: dict[str, str], body: bytes | None = None) -> tuple[int, bytes]:
    """One request with the path sent byte for byte (an HTTP library would normalise it first)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        connection.putrequest(method, path, skip_accept_encoding=True)
        for name, value in {**headers, "Content-Length": str(len(body or b""))}.items():
            connection.putheader(name, value)
        connection.endheaders(body)
        reply = connection.getresponse()
        return reply.status, reply.read()
    finally:
        connection.close()


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("path", TRICKS)
def test_no_spelling_of_an_admin_path_reaches_the_admin_service_through_envoy(
        cfg: DynasealConfig, stack: object, path: str, method: str) -> None:
    token = config_environment(cfg)["DYNASEAL_ADMIN_TOKEN"]
    status, body = _raw(cfg.gateway.ports.envoy, method, path, {"Authorization": f"Bearer {token}"})
    assert status in (400, 401, 403, 404), (status, body[:200])
    assert b"tenants" not in body and b"generation" not in body and b"<html" not in body.lower()


def test_an_outsized_login_body_through_envoy_is_a_413(cfg: DynasealConfig, stack: object) -> None:
    form = b"username=user1%40example.com&password=" + b"x" * (256 * 1024)
    status, _ = _raw(cfg.gateway.ports.envoy, "POST", "/api/v1/user/login",
                     {"Content-Type": "application/x-www-form-urlencoded"}, form)
    assert status == 413
