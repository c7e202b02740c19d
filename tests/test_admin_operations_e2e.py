"""The admin API's DLQ and revocation routes on a real broker (tansu), the real callback consumer and Redis:
the DLQ filled for real by the consumer (receivers that refuse), listed by reason, one entry replayed and
delivered once, a replay that fails again back on the DLQ; a key's revocation marker in Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from consumer_support import FAST, SLOW, ConsumerRig
from fastapi.testclient import TestClient
from pipeline_harness import wait_until
from pydantic import SecretStr
from redis import Redis

from admin_api.app import create_app
from admin_api.console import console_routers
from admin_api.console_context import ConsoleContext, install_console
from dynaseal.ledger.revocation import marker
from dynaseal.usage_store.schema import make_engine

pytestmark = pytest.mark.integration
TOKEN = "admin-token-operations-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def rig(redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsumerRig]:
    running = ConsumerRig(tmp_path_factory.mktemp("admin-ops"), redis_server)
    try:
        running.start()
        yield running
    finally:
        running.stop()


@pytest.fixture
def client(rig: ConsumerRig, redis_server: str, tmp_path: Path) -> Iterator[TestClient]:
    context = ConsoleContext(make_engine(f"sqlite:///{tmp_path / 'usage.db'}"), rig.bootstrap, redis_server, (),
                             {FAST: 3600})
    app = create_app(SecretStr(TOKEN), console_routers())
    install_console(app, context)
    with TestClient(app) as test_client:
        yield test_client


def test_dlq_by_reason_and_one_entry_replayed_once(rig: ConsumerRig, client: TestClient) -> None:
    fast, slow = rig.receivers[FAST], rig.receivers[SLOW]
    jti_x, jti_y = f"x-{uuid.uuid4().hex[:8]}", f"y-{uuid.uuid4().hex[:8]}"
    answers = {jti_x: 400, jti_y: 410}
    fast.behaviours[jti_x] = slow.behaviours[jti_y] = lambda payload, attempt: answers[payload["key_id"]]
    first, second = rig.produce(FAST, jti_x, 2)
    (third,) = rig.produce(SLOW, jti_y)
    wait_until(lambda: len(rig.dlq(jti_x)) == 2 and len(rig.dlq(jti_y)) == 1, 60, "three entries in the DLQ")

    listing = client.get("/admin/v1/dlq", headers=AUTH).json()
    mine = {e["request_id"]: e for e in listing["entries"] if e["request_id"] in {first, second, third}}
    assert {rid: e["reason"] for rid, e in mine.items()} == {first: "rejected:http_400", second: "rejected:http_400",
                                                            third: "rejected:http_410"}
    assert listing["by_reason"]["rejected:http_400"] >= 2 and listing["by_reason"]["rejected:http_410"] >= 1
    only_410 = client.get("/admin/v1/dlq", params={"reason": "rejected:http_410"}, headers=AUTH).json()["entries"]
    assert third in {e["request_id"] for e in only_410} and all(e["reason"] == "rejected:http_410" for e in only_410)
    assert all(e["replayable"] and e["replayed_at_ms"] is None for e in mine.values())
    assert "content" not in mine[first]

    answers[jti_x] = 200  # the tenant fixed its receiver
    reply = client.post(f"/admin/v1/dlq/{mine[first]['id']}/replay", headers=AUTH)
    assert reply.status_code == 202 and reply.json()["replayed"]["request_id"] == first
    wait_until(lambda: first in fast.delivered(jti_x), 60, "the replayed callback delivered")
    assert client.post(f"/admin/v1/dlq/{mine[first]['id']}/replay", headers=AUTH).status_code == 409
    assert set(fast.delivered(jti_x)) == {first}  # the other entry stays until it is replayed itself
    assert fast.bad_signatures == 0

    # A replay that fails again goes back on the DLQ through the consumer, with its new reason.
    assert client.post(f"/admin/v1/dlq/{mine[third]['id']}/replay", headers=AUTH).status_code == 202
    wait_until(lambda: len(rig.dlq(jti_y)) == 2, 60, "the failed replay back on the DLQ")
    listing = client.get("/admin/v1/dlq", params={"tenant": SLOW}, headers=AUTH).json()
    again = [e for e in listing["entries"] if e["request_id"] == third]
    assert len(again) == 2 and [e["replayed_at_ms"] is not None for e in again] == [True, False]
    assert client.get("/admin/v1/dlq", params={"tenant": "nobody"}, headers=AUTH).json() == {"by_reason": {},
                                                                                          "entries": []}
    assert client.post("/admin/v1/dlq/0:999999/replay", headers=AUTH).status_code == 404
    assert client.post("/admin/v1/dlq/7:0/replay", headers=AUTH).status_code == 404


def test_revocation_writes_the_marker_authz_reads_for_the_keys_lifetime(client: TestClient, redis_server: str) -> None:
    redis = Redis.from_url(redis_server)
    try:
        reply = client.post("/admin/v1/revocations", json={"tenant": FAST, "key_id": "key-1"}, headers=AUTH)
        assert reply.status_code == 200 and reply.json()["marker_ttl_s"] == 3600
        assert 3600 <= int(redis.ttl(marker(FAST, "key-1"))) <= 3630
        assert not redis.exists(marker(SLOW, "key-1"))  # another tenant's key of the same id is untouched
        child = client.post("/admin/v1/revocations", json={"tenant": SLOW, "key_id": "kid", "ancestors": ["root"]},
                            headers=AUTH)
        assert child.status_code == 200 and child.json()["marker_ttl_s"] == 366 * 86400  # a tenant the file lacks
        assert redis.exists(marker(SLOW, "kid", ("root",))) and not redis.exists(marker(SLOW, "kid"))
    finally:
        redis.close()
