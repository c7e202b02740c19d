"""issuer_api callbacks: Standard Webhooks verification, idempotent storage, and /usage visibility."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from test_issuer_support import (
    assert_error,
    bearer,
    callback_secret,
    issuer_client,
    login,
    signed_callback,
    usage_body,
)

from dynaseal.config import DynasealConfig
from issuer_api.app import issuer_state
from issuer_api.callback_writer import CallbackWriter
from issuer_api.store import Callback, utcnow


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DynasealConfig, TestClient]]:
    cfg, client = issuer_client(tmp_path_factory.mktemp("issuer-callbacks"))
    yield cfg, client
    client.__exit__(None, None, None)


@pytest.fixture(scope="module")
def secret(issuer: tuple[DynasealConfig, TestClient]) -> str:
    return callback_secret(issuer[0])


def _stored(client: TestClient, webhook_id: str) -> int:
    with issuer_state(client.app).sessions() as db:  # type: ignore[arg-type]
        return db.scalar(select(func.count(Callback.id)).where(Callback.webhook_id == webhook_id)) or 0


def test_valid_callback_is_stored_once_and_printed(issuer: tuple[DynasealConfig, TestClient], secret: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    client = issuer[1]
    body, headers = signed_callback(secret, usage_body("evt-1", "jti-print", "client1"))
    for path in ("/v1/callback/usage", "/callback/usage"):  # a redelivery, to the seed's path
        response = client.post(path, content=body, headers=headers)
        assert response.status_code == 200, response.text
    assert _stored(client, headers["webhook-id"]) == 1
    assert "callback event_id=evt-1 tokens=57 content='hello from the model'" in capsys.readouterr().out
    duplicate = client.post("/v1/callback/usage", content=body, headers=headers).json()
    assert duplicate["status"] == "duplicate"


def test_seed_minimal_body_is_accepted(issuer: tuple[DynasealConfig, TestClient], secret: str) -> None:
    body, headers = signed_callback(secret, {"event_id": 111, "content": "hi", "tokens": 3})
    response = issuer[1].post("/callback/usage", content=body, headers=headers)
    assert response.json()["status"] == "stored"


@pytest.mark.parametrize("tamper", ["body", "signature", "missing", "garbage", "secret"])
def test_bad_or_missing_signature_is_401(issuer: tuple[DynasealConfig, TestClient], secret: str,
                                         tamper: str) -> None:
    client = issuer[1]
    body, headers = signed_callback(secret, usage_body("evt-bad", "jti-bad", "client1"))
    if tamper == "body":
        body = body.replace(b"57", b"58")
    elif tamper == "signature":
        headers["webhook-signature"] = "v1,AAAA" + headers["webhook-signature"][7:]
    elif tamper == "missing":
        del headers["webhook-signature"]
    elif tamper == "garbage":
        headers["webhook-signature"] = "no-comma-here"
    else:
        body, headers = signed_callback("whsec_" + "b3RoZXItc2VjcmV0LW9mLTMyLWJ5dGVzLWxvbmctLS0=",
                                        usage_body("evt-bad", "jti-bad", "client1"))
    assert_error(client.post("/v1/callback/usage", content=body, headers=headers), 401, "invalid_signature")
    assert _stored(client, headers["webhook-id"]) == 0


def test_stale_or_future_timestamp_is_401(issuer: tuple[DynasealConfig, TestClient], secret: str) -> None:
    client = issuer[1]
    for shift in (timedelta(minutes=-10), timedelta(minutes=10)):
        body, headers = signed_callback(secret, usage_body("evt-old", "jti-old", "client1"),
                                        when=datetime.now(UTC) + shift)
        response = client.post("/v1/callback/usage", content=body, headers=headers)
        assert_error(response, 401, "invalid_signature")


def test_signed_but_malformed_bodies_are_400(issuer: tuple[DynasealConfig, TestClient], secret: str) -> None:
    client = issuer[1]
    for payload in ([1, 2], {"event_id": "e", "tokens": "many"}, {"event_id": "e", "usage": "x"}):
        body, headers = signed_callback(secret, payload)  # type: ignore[arg-type]
        assert_error(client.post("/v1/callback/usage", content=body, headers=headers), 400)


def test_usage_visibility_tenant_sees_all_end_user_only_own(tmp_path_factory: pytest.TempPathFactory) -> None:
    cfg, client = issuer_client(tmp_path_factory.mktemp("issuer-usage"))
    try:
        secret = callback_secret(cfg)
        client1 = bearer(login(client, "client1")["access_token"])
        user1 = bearer(login(client, "user1")["access_token"])
        own = client.post("/key/create", headers=client1).json()["jti"]
        tenants = client.post("/key/create", headers=user1).json()["jti"]
        deliveries = [(own, "client1", 10), (own, "client1", 20), (tenants, "user1", 30),
                      ("stranger", None, 5)]
        for i, (jti, sub, tokens) in enumerate(deliveries):
            body, headers = signed_callback(secret, usage_body(f"evt-{i}", jti, sub, tokens=tokens))
            assert client.post("/v1/callback/usage", content=body, headers=headers).status_code == 200

        mine = client.get("/usage", headers=client1).json()
        assert {item["jti"] for item in mine["items"]} == {own}
        assert mine["totals"] == [{"jti": own, "requests": 2, "tokens": 30, "cost": None}]
        everything = client.get("/usage", headers=user1).json()
        assert len(everything["items"]) == 4
        assert {t["jti"]: t["tokens"] for t in everything["totals"]} == {own: 30, tenants: 30, "stranger": 5}
        assert everything["items"][0]["event_id"] == "evt-3"  # newest first

        assert client.get("/usage", headers=client1, params={"jti": tenants}).json()["items"] == []
        filtered = client.get("/usage", headers=user1, params={"jti": own}).json()
        assert [i["event_id"] for i in filtered["items"]] == ["evt-1", "evt-0"]

        seen, cursor = [], None
        while True:
            params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
            page = client.get("/usage", headers=user1, params=params)
            seen += [i["event_id"] for i in page.json()["items"]]
            cursor = page.json()["next_cursor"]
            if cursor is None:
                break
        assert seen == ["evt-3", "evt-2", "evt-1", "evt-0"]

        assert_error(client.get("/usage"), 401)
        assert_error(client.get("/usage", headers=user1, params={"limit": 101}), 400)
        assert_error(client.get("/usage", headers=user1, params={"cursor": "abc"}), 400)
    finally:
        client.__exit__(None, None, None)


def test_callback_body_is_kept_verbatim(issuer: tuple[DynasealConfig, TestClient], secret: str) -> None:
    client = issuer[1]
    payload = usage_body("evt-verbatim", "jti-v", "client1")
    body, headers = signed_callback(secret, payload)
    client.post("/v1/callback/usage", content=body, headers=headers)
    with issuer_state(client.app).sessions() as db:  # type: ignore[arg-type]
        row = db.scalar(select(Callback).where(Callback.webhook_id == headers["webhook-id"]))
    assert row is not None and row.payload == json.loads(body) and row.jti == "jti-v" and row.tokens == 57


@pytest.mark.parametrize("webhook_id", [
    b"", b"a" * 129, "caf\u00e9".encode(), "caf\u00e9".encode("latin-1"), b"id with space", b"id\x7f", b"id\x01",
    b"\xff\xfe", "\u2028".encode(),
])
def test_a_malformed_webhook_id_is_a_clear_400(issuer: tuple[DynasealConfig, TestClient], secret: str,
                                               webhook_id: bytes) -> None:
    client = issuer[1]
    as_text = webhook_id.decode("latin-1")  # what the receiver sees of these bytes
    body, headers = signed_callback(secret, usage_body("evt-wid", "jti-wid", "client1"), msg_id=as_text or "x")
    sent: dict[str, Any] = {**headers, "webhook-id": webhook_id}
    error = assert_error(client.post("/v1/callback/usage", content=body, headers=sent), 400, "invalid_webhook_id")
    assert error["param"] == "webhook-id"
    assert _stored(client, as_text) == 0


def test_the_longest_printable_webhook_id_is_stored(issuer: tuple[DynasealConfig, TestClient], secret: str) -> None:
    client = issuer[1]
    webhook_id = "msg_" + "~!#$%&'*+-.^_`|" * 8 + "z" * 4
    assert len(webhook_id) == 128
    body, headers = signed_callback(secret, usage_body("evt-long", "jti-long", "client1"), msg_id=webhook_id)
    assert client.post("/callback/usage", content=body, headers=headers).json()["status"] == "stored"
    assert _stored(client, webhook_id) == 1


def test_the_writer_answers_each_row_of_a_group_commit(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Rows stored together: repeats are duplicates, and one unstorable row fails alone."""
    _cfg, client = issuer_client(tmp_path_factory.mktemp("issuer-writer"))
    state = issuer_state(client.app)  # type: ignore[arg-type]
    writer = CallbackWriter(state.engine)

    def row(webhook_id: str, tokens: int | None = 1) -> dict[str, object]:
        return {"webhook_id": webhook_id, "event_id": None, "jti": None, "sub": None, "tokens": tokens,
                "usage": None, "content": None, "payload": {}, "received_at": utcnow()}

    async def scenario() -> list[object]:
        rows = [row(f"w-{i % 20}") for i in range(40)] + [row("w-bad", tokens=None)]
        return await asyncio.gather(*(writer.store(r) for r in rows), return_exceptions=True)

    try:
        outcomes = asyncio.run(scenario())
        assert outcomes[:40].count(True) == 20 and outcomes[:40].count(False) == 20
        assert isinstance(outcomes[40], IntegrityError)  # NOT NULL: an error, never "duplicate"
        for i in range(20):
            assert _stored(client, f"w-{i}") == 1
    finally:
        writer.close()
        client.__exit__(None, None, None)


def _reservation_body(request_id: str, tokens: int) -> dict[str, object]:
    body = usage_body("evt-res", "jti-res", None, tokens=tokens)
    body.update({"usage_source": "reservation", "request_id": request_id, "model": "", "status": 0})
    return body


def test_a_late_real_callback_replaces_the_reservation_row(issuer: tuple[DynasealConfig, TestClient],
                                                           secret: str) -> None:
    client = issuer[1]
    request_id = "req-late-" + datetime.now(UTC).strftime("%H%M%S%f")
    body, headers = signed_callback(secret, _reservation_body(request_id, 300), msg_id=request_id + ".reservation")
    assert client.post("/v1/callback/usage", content=body, headers=headers).json()["status"] == "stored"
    assert _stored(client, request_id + ".reservation") == 1
    real = {**usage_body("evt-real", "jti-res", None, tokens=57), "request_id": request_id, "usage_source": "upstream"}
    body, headers = signed_callback(secret, real, msg_id=request_id)
    assert client.post("/v1/callback/usage", content=body, headers=headers).json()["status"] == "stored"
    assert _stored(client, request_id) == 1 and _stored(client, request_id + ".reservation") == 0
    # The reservation's callback again (a redelivery): the real row already tells, nothing is stored.
    body, headers = signed_callback(secret, _reservation_body(request_id, 300), msg_id=request_id + ".reservation")
    assert client.post("/v1/callback/usage", content=body, headers=headers).json()["status"] == "superseded"
    assert _stored(client, request_id + ".reservation") == 0


def test_a_real_callback_of_another_request_leaves_a_reservation_row(issuer: tuple[DynasealConfig, TestClient],
                                                                    secret: str) -> None:
    client = issuer[1]
    request_id = "req-keep-" + datetime.now(UTC).strftime("%H%M%S%f")
    body, headers = signed_callback(secret, _reservation_body(request_id, 120), msg_id=request_id + ".reservation")
    client.post("/v1/callback/usage", content=body, headers=headers)
    # A body naming the request under another webhook-id cannot delete it.
    other = {**usage_body("evt-o", "jti-res", None), "request_id": request_id}
    body, headers = signed_callback(secret, other, msg_id="req-other-" + request_id)
    client.post("/v1/callback/usage", content=body, headers=headers)
    assert _stored(client, request_id + ".reservation") == 1


def test_a_batch_is_stored_per_event_and_a_bad_event_is_refused_alone(
        issuer: tuple[DynasealConfig, TestClient], secret: str) -> None:
    client = issuer[1]
    stamp = datetime.now(UTC).strftime("%H%M%S%f")
    good = [f"req-b{stamp}-{i}" for i in range(3)]
    events = [{"id": i, "event": {**usage_body(f"evt-{i}", "jti-batch", None), "request_id": i}} for i in good]
    bad = f"req-bad-{stamp}"
    events.insert(1, {"id": bad, "event": {**usage_body("evt-bad", "jti-batch", None), "tokens": -1}})
    body, headers = signed_callback(secret, {"type": "batch", "events": events}, msg_id=f"batch_{stamp}")
    reply = client.post("/v1/callback/usage", content=body, headers=headers)
    assert reply.status_code == 200, reply.text
    assert reply.json()["results"] == {good[0]: "stored", bad: "refused", good[1]: "stored", good[2]: "stored"}
    assert all(_stored(client, i) == 1 for i in good) and _stored(client, bad) == 0
    assert _stored(client, f"batch_{stamp}") == 0  # the batch's own id is not a row
    # The same batch again (a retry): each event a duplicate, nothing stored twice.
    body, headers = signed_callback(secret, {"type": "batch", "events": events}, msg_id=f"batch_{stamp}")
    assert set(client.post("/v1/callback/usage", content=body, headers=headers).json()["results"].values()) == \
        {"duplicate", "refused"}


def test_a_malformed_batch_is_a_clear_400(issuer: tuple[DynasealConfig, TestClient], secret: str) -> None:
    client = issuer[1]
    for events in ([], "x", [{"id": "a b", "event": {}}], [{"id": "ok"}], [1]):
        body, headers = signed_callback(secret, {"type": "batch", "events": events})
        assert client.post("/v1/callback/usage", content=body, headers=headers).status_code == 400
