"""authz on SIGTERM: reports NOT_SERVING, finishes the Check in flight, then exits cleanly."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import grpc
import orjson
import pytest
import redis
import yaml
from conftest import AUTHZ_SERVERS, OTHER_TENANT, TenantKeys, write_test_config
from envoy.service.auth.v3 import external_auth_pb2_grpc
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse

from dynaseal.config import load_config
from dynaseal.keys.mint import mint
from dynaseal_launcher.probes import grpc_serving
from dynaseal_launcher.stack import AUTHZ_SERVICE_NAME, LocalStack

pytestmark = pytest.mark.integration


def check_request(token: str) -> CheckRequest:
    request = CheckRequest()
    http = request.attributes.request.http
    http.method, http.path, http.id = "POST", "/v1/chat/completions", "drain-1"
    http.raw_body = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}],
                                  "max_tokens": 5})
    http.headers["authorization"] = f"Bearer {token}"
    http.headers["content-type"] = "application/json"
    http.headers["x-request-id"] = "drain-1"
    return request


BUSY_SCRIPT = """
local start = redis.call('TIME')
local started = start[1] * 1000000 + start[2]
while true do
  local now = redis.call('TIME')
  if now[1] * 1000000 + now[2] - started > tonumber(ARGV[1]) then return 1 end
end
"""


@pytest.mark.parametrize("authz_server", AUTHZ_SERVERS)
def test_sigterm_drains_the_check_in_flight(tmp_path: Path, test_keys: TenantKeys, config_path: Path,
                                            authz_server: str) -> None:
    path = write_test_config(tmp_path, test_keys, authz_server)
    raw = yaml.safe_load(path.read_text())
    raw.pop("issuer")
    raw["tenants"] = [t for t in raw["tenants"] if t["id"] == OTHER_TENANT]
    raw["gateway"]["redis_timeout_ms"] = 5000  # the Check must outlive the SIGTERM, not time out
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    stack = LocalStack(cfg, path, pipeline=False)
    stack.prepare()
    specs = [s for s in stack.specs(stack.data_dir / "envoy" / "envoy.yaml") if s.name in ("redis", "authz")]
    for spec in specs:
        stack.supervisor.start(spec)
    target = f"127.0.0.1:{cfg.gateway.ports.authz}"
    authz = next(s for s in stack.supervisor.running if s.spec.name == "authz")
    try:
        token = mint(test_keys.acme_ed25519, tenant=OTHER_TENANT, models=["gpt-4o-mini"], max_tokens=5, ttl=60)
        blocker = redis.Redis(port=cfg.local.redis_port)
        # A 1.5 s script holds the real Redis busy, so the Check still waits on it when SIGTERM comes.
        sleeper = threading.Thread(target=lambda: blocker.eval(BUSY_SCRIPT, 0, 1_500_000))
        sleeper.start()
        time.sleep(0.1)
        result: dict[str, CheckResponse] = {}

        def call() -> None:
            with grpc.insecure_channel(target) as channel:
                stub = external_auth_pb2_grpc.AuthorizationStub(channel)
                result["reply"] = stub.Check(check_request(token), timeout=10)

        caller = threading.Thread(target=call)
        caller.start()
        time.sleep(0.3)
        authz.process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        assert not grpc_serving(target, AUTHZ_SERVICE_NAME), "still SERVING after SIGTERM"
        caller.join(10)
        sleeper.join(10)
        assert result["reply"].status.code == grpc.StatusCode.OK.value[0], result["reply"]
        assert authz.process.wait(15) == 0
    finally:
        stack.stop()
