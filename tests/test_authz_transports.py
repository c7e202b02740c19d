"""What depends on authz's gRPC transport, run on both (`authz.server: native` and `grpcio`).

Each transport gets a stack of its own (Redis, authz, Envoy, mock LLM): decisions through Envoy,
the readiness health check following Redis, reflection, hostile gRPC input, and deadlines.
The drain on SIGTERM is in test_authz_drain.py, also on both.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import orjson
import pytest
import redis
import yaml
from conftest import AUTHZ_SERVERS, OTHER_TENANT, TenantKeys, wait_until, write_test_config
from envoy.service.auth.v3 import external_auth_pb2_grpc
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest, CheckResponse
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from dynaseal.config import load_config
from dynaseal.keys.mint import mint
from dynaseal_launcher.probes import grpc_serving
from dynaseal_launcher.stack import AUTHZ_SERVICE_NAME, LocalStack

pytestmark = pytest.mark.integration
CHECK = "/envoy.service.auth.v3.Authorization/Check"
BUSY_SCRIPT = """
local start = redis.call('TIME')
local started = start[1] * 1000000 + start[2]
while true do
  local now = redis.call('TIME')
  if now[1] * 1000000 + now[2] - started > tonumber(ARGV[1]) then return 1 end
end
"""



@pytest.fixture(scope="module", params=AUTHZ_SERVERS)
def transport_stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                    test_keys: TenantKeys, config_path: Path) -> Iterator[LocalStack]:
    """Redis + authz on one transport + Envoy + mock LLM, on ports of their own."""
    path = write_test_config(tmp_path_factory.mktemp(f"transport-{request.param}"), test_keys, request.param)
    raw = yaml.safe_load(path.read_text())
    raw.pop("issuer")
    raw["tenants"] = [t for t in raw["tenants"] if t["id"] == OTHER_TENANT]
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    stack = LocalStack(load_config(path), path, pipeline=False)
    stack.start()
    try:
        yield stack
    finally:
        stack.stop()


def target(stack: LocalStack) -> str:
    return f"127.0.0.1:{stack.cfg.gateway.ports.authz}"


def post(stack: LocalStack, key: str, **extra: object) -> httpx.Response:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8, **extra}
    return httpx.post(f"http://127.0.0.1:{stack.cfg.gateway.ports.envoy}/v1/chat/completions",
                      headers={"authorization": f"Bearer {key}"}, json=body, timeout=10)


def check_request(token: str, request_id: str) -> CheckRequest:
    request = CheckRequest()
    http = request.attributes.request.http
    http.method, http.path, http.id = "POST", "/v1/chat/completions", request_id
    http.raw_body = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}],
                                  "max_tokens": 5})
    http.headers["authorization"] = f"Bearer {token}"
    http.headers["content-type"] = "application/json"
    http.headers["x-request-id"] = request_id
    return request


def test_the_configured_transport_is_the_one_serving(transport_stack: LocalStack) -> None:
    kind = transport_stack.cfg.authz.server
    log = (transport_stack.data_dir / "logs" / "authz.log").read_text()
    listening = [orjson.loads(line) for line in log.splitlines() if '"authz listening"' in line]
    assert listening and listening[-1]["server"] == kind, log[-2000:]


def test_allow_and_deny_through_envoy(transport_stack: LocalStack, test_keys: TenantKeys) -> None:
    key = mint(test_keys.acme_ed25519, tenant=OTHER_TENANT, models=["gpt-4o-mini"], max_tokens=64, ttl=600)
    ok = post(transport_stack, key)
    assert ok.status_code == 200, ok.text
    assert ok.headers["x-dynaseal-request-id"]
    head, payload, sig = key.split(".")
    tampered = post(transport_stack, f"{head}.{payload}.{sig[::-1]}")
    assert tampered.status_code == 401
    assert tampered.json()["error"]["code"] == "invalid_api_key"
    assert tampered.headers["x-dynaseal-request-id"]
    outside = post(transport_stack, key, model="gpt-4o")
    assert outside.status_code == 403
    assert outside.json()["error"]["code"] == "model_not_allowed"
    too_many = post(transport_stack, key, max_tokens=65)
    assert too_many.status_code == 403


def test_many_concurrent_checks_each_get_their_own_answer(transport_stack: LocalStack,
                                                          test_keys: TenantKeys) -> None:
    good = mint(test_keys.acme_ed25519, tenant=OTHER_TENANT, models=["gpt-4o-mini"], max_tokens=64, ttl=600)
    head, payload, sig = good.split(".")
    bad = f"{head}.{payload}.{sig[::-1]}"
    with grpc.insecure_channel(target(transport_stack)) as channel:
        check = channel.unary_unary(CHECK, request_serializer=CheckRequest.SerializeToString,
                                    response_deserializer=CheckResponse.FromString)
        futures = [(n % 2 == 0, check.future(check_request(good if n % 2 == 0 else bad, f"conc-{n}"), timeout=10))
                   for n in range(200)]
        for allowed, future in futures:
            reply = future.result()
            assert (reply.status.code == 0) is allowed, reply


def test_health_follows_redis(transport_stack: LocalStack, test_keys: TenantKeys) -> None:
    key = mint(test_keys.acme_ed25519, tenant=OTHER_TENANT, models=["gpt-4o-mini"], max_tokens=64, ttl=600)
    assert grpc_serving(target(transport_stack), AUTHZ_SERVICE_NAME)
    redis_spec = transport_stack.supervisor.stop_service("redis")
    try:
        assert wait_until(lambda: not grpc_serving(target(transport_stack), AUTHZ_SERVICE_NAME)), \
            "health never went NOT_SERVING"
        with grpc.insecure_channel(target(transport_stack)) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(service=AUTHZ_SERVICE_NAME), timeout=2)
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            # Liveness stays SERVING; an unknown service is NOT_FOUND, as grpcio's servicer says.
            assert stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2).status == \
                health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as unknown:
                stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=2)
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        reply = post(transport_stack, key)
        assert reply.status_code == 503
        assert reply.json()["error"]["code"] == "authz_unavailable"
    finally:
        transport_stack.supervisor.start(redis_spec)
    assert wait_until(lambda: grpc_serving(target(transport_stack), AUTHZ_SERVICE_NAME)), "never SERVING again"
    assert wait_until(lambda: post(transport_stack, key).status_code == 200), "service did not resume"


def test_health_watch_streams_the_current_status(transport_stack: LocalStack) -> None:
    with grpc.insecure_channel(target(transport_stack)) as channel:
        stream = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=AUTHZ_SERVICE_NAME), timeout=5)
        first = next(stream)
        stream.cancel()
    assert first.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_services(transport_stack: LocalStack) -> None:
    with grpc.insecure_channel(target(transport_stack)) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                            timeout=5)
        names = {s.name for s in next(replies).list_services_response.service}
    assert {AUTHZ_SERVICE_NAME, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names


def test_garbage_and_unknown_methods_are_errors_and_the_server_lives_on(transport_stack: LocalStack,
                                                                         test_keys: TenantKeys) -> None:
    with grpc.insecure_channel(target(transport_stack)) as channel:
        raw = channel.unary_unary(CHECK)  # bytes in, bytes out: no client-side serialisation
        for payload in (b"\xff" * 64, b"\x0a\xff\xff\xff\xff\x0f", b"\x12" + b"\x80" * 20):
            with pytest.raises(grpc.RpcError) as failed:
                raw(payload, timeout=5)
            assert failed.value.code() != grpc.StatusCode.OK
        # An empty CheckRequest parses: it is a decision, and it must be a refusal.
        reply = CheckResponse.FromString(raw(b"", timeout=5))
        assert reply.status.code != 0
        with pytest.raises(grpc.RpcError) as unknown:
            channel.unary_unary("/envoy.service.auth.v3.Authorization/Nope")(b"", timeout=5)
        assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED
    key = mint(test_keys.acme_ed25519, tenant=OTHER_TENANT, models=["gpt-4o-mini"], max_tokens=64, ttl=600)
    assert post(transport_stack, key).status_code == 200


def test_a_passed_deadline_is_deadline_exceeded_and_frees_the_call(transport_stack: LocalStack,
                                                                    test_keys: TenantKeys) -> None:
    key = mint(test_keys.acme_ed25519, tenant=OTHER_TENANT, models=["gpt-4o-mini"], max_tokens=64, ttl=600)
    blocker = redis.Redis(port=transport_stack.cfg.local.redis_port)
    # Redis held busy for 0.6 s: the Check waits on it past its 0.2 s deadline.
    sleeper = threading.Thread(target=lambda: blocker.eval(BUSY_SCRIPT, 0, 600_000))
    sleeper.start()
    try:
        time.sleep(0.05)
        with grpc.insecure_channel(target(transport_stack)) as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            with pytest.raises(grpc.RpcError) as late:
                stub.Check(check_request(key, "deadline-1"), timeout=0.2)
            assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        sleeper.join(10)
    assert wait_until(lambda: post(transport_stack, key).status_code == 200)
