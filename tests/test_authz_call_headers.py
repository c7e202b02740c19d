"""What Envoy puts on its Check call to authz: the rendered gateway config, a real Envoy, and a gRPC
server in authz's place that records each call's metadata (`skip_envoy_headers`: no x-envoy-internal
or x-forwarded-for, which authz never reads)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import httpx
import pytest
from conftest import TenantKeys, wait_until, write_test_config
from envoy.service.auth.v3 import external_auth_pb2_grpc
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse, DeniedHttpResponse
from envoy.type.v3.http_status_pb2 import HttpStatus
from google.rpc import code_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from dynaseal.config import load_config
from dynaseal_launcher import envoy_config
from dynaseal_launcher.probes import http_ok
from dynaseal_launcher.stack import AUTHZ_SERVICE_NAME


class RecordingAuthz(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    """Refuses every request (403) and keeps the metadata names of each Check call."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def Check(self, request: CheckRequest, context: grpc.ServicerContext) -> CheckResponse:
        """Record, then deny."""
        self.calls.append([key for key, _ in context.invocation_metadata()])
        return CheckResponse(status=status_pb2.Status(code=code_pb2.PERMISSION_DENIED),
                             denied_response=DeniedHttpResponse(status=HttpStatus(code=403), body="{}"))


@pytest.fixture
def recorded(tmp_path: Path, test_keys: TenantKeys) -> Iterator[tuple[RecordingAuthz, str]]:
    """Envoy as rendered for a test config, its ext_authz cluster pointing at a RecordingAuthz."""
    cfg = load_config(write_test_config(tmp_path, test_keys))
    authz = RecordingAuthz()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(authz, server)
    checker = health.HealthServicer()
    checker.set(AUTHZ_SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    server.add_insecure_port(f"127.0.0.1:{cfg.gateway.ports.authz}")
    server.start()
    envoy_file = tmp_path / "envoy.yaml"
    envoy_file.write_text(envoy_config.render(cfg, tmp_path / "access.log"))
    envoy = subprocess.Popen([envoy_config.envoy_binary(), "-c", str(envoy_file), "--disable-hot-restart",
                              "--log-level", "warn", "--concurrency", "1"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: http_ok(f"http://127.0.0.1:{cfg.gateway.ports.envoy_admin}/ready"), 30)
        yield authz, f"http://127.0.0.1:{cfg.gateway.ports.envoy}/v1/chat/completions"
    finally:
        envoy.terminate()
        envoy.wait(timeout=10)
        server.stop(grace=None)


def test_the_check_call_carries_no_envoy_headers(recorded: tuple[RecordingAuthz, str]) -> None:
    authz, url = recorded
    status = 0
    for _ in range(100):  # until Envoy's health check has found the authz host healthy
        status = httpx.post(url, content=b"{}", headers={"authorization": "Bearer x"}, timeout=5).status_code
        if status == 403:
            break
        time.sleep(0.1)
    assert status == 403 and authz.calls, f"authz was not called ({status})"
    names = set(authz.calls[-1])
    # Envoy's async client added these two (and still adds x-envoy-expected-rq-timeout-ms, the router's).
    assert names.isdisjoint({"x-envoy-internal", "x-forwarded-for"}), names
