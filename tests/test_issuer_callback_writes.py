"""issuer_api's callback writes: what shares a transaction, and races between a request's two callbacks.

A real callback replaces its request's reservation row, and a reservation callback is dropped when the
real one is stored: decided in the writer's own transaction, so the two arriving together still leave
one row. The events of a signed batch are queued together and share group commits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, func, select, text
from test_issuer_support import callback_secret, issuer_client, signed_callback, usage_body

from dynaseal.config import DynasealConfig
from issuer_api.app import issuer_state
from issuer_api.callback_writer import CallbackRow, Outcome
from issuer_api.store import Callback, make_engine, utcnow


@pytest.fixture(scope="module")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DynasealConfig, TestClient]]:
    cfg, client = issuer_client(tmp_path_factory.mktemp("issuer-callback-writes"))
    yield cfg, client
    client.__exit__(None, None, None)


def _rows(client: TestClient, *webhook_ids: str) -> dict[str, int]:
    with issuer_state(client.app).sessions() as db:  # type: ignore[arg-type]
        found = db.execute(select(Callback.webhook_id, func.count()).where(Callback.webhook_id.in_(webhook_ids))
                           .group_by(Callback.webhook_id)).all()
    return {str(webhook_id): int(n) for webhook_id, n in found}


def _reservation(request_id: str) -> dict[str, Any]:
    body = usage_body("evt-res", "jti-race", None, tokens=300)
    body.update({"usage_source": "reservation", "request_id": request_id, "model": "", "status": 0})
    return body


def _real(request_id: str) -> dict[str, Any]:
    return {**usage_body("evt-real", "jti-race", None), "request_id": request_id, "usage_source": "upstream"}


def test_a_reservation_and_the_real_callback_arriving_together_leave_the_real_row_alone(
        issuer: tuple[DynasealConfig, TestClient]) -> None:
    cfg, client = issuer
    secret = callback_secret(cfg)
    stamp = datetime.now(UTC).strftime("%H%M%S%f")
    request_ids = [f"req-race-{stamp}-{i}" for i in range(25)]
    requests: list[tuple[bytes, dict[str, str]]] = []
    for i, request_id in enumerate(request_ids):
        pair = [signed_callback(secret, _reservation(request_id), msg_id=request_id + ".reservation"),
                signed_callback(secret, _real(request_id), msg_id=request_id)]
        requests += pair if i % 2 else pair[::-1]  # both orders of arrival

    async def send_all() -> list[int]:
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://issuer") as http:
            replies = await asyncio.gather(*(http.post("/v1/callback/usage", content=body, headers=headers)
                                             for body, headers in requests))
        return [reply.status_code for reply in replies]

    assert set(asyncio.run(send_all())) == {200}
    rows = _rows(client, *request_ids, *(r + ".reservation" for r in request_ids))
    assert rows == dict.fromkeys(request_ids, 1)  # the real row of each request, never its reservation beside it


def test_the_writer_decides_superseded_and_replaced_rows_in_one_group(
        issuer: tuple[DynasealConfig, TestClient]) -> None:
    client = issuer[1]
    writer = issuer_state(client.app).callbacks  # type: ignore[arg-type]
    stamp = datetime.now(UTC).strftime("%H%M%S%f")

    def row(webhook_id: str, **rules: str) -> CallbackRow:
        values: dict[str, object] = {"webhook_id": webhook_id, "event_id": None, "jti": None, "sub": None, "tokens": 1,
                  "usage": None, "content": None, "payload": {}, "received_at": utcnow()}
        return CallbackRow(values, **rules)

    first, second = f"req-w1-{stamp}", f"req-w2-{stamp}"

    async def scenario() -> list[Outcome]:
        return list(await asyncio.gather(
            writer.write(row(first + ".reservation", unless_stored=first)),  # stored, then replaced
            writer.write(row(first, replaces=first + ".reservation")),
            writer.write(row(second, replaces=second + ".reservation")),
            writer.write(row(second + ".reservation", unless_stored=second)),  # too late: superseded
            writer.write(row(second)),  # a redelivery
        ))

    assert asyncio.run(scenario()) == [Outcome.STORED, Outcome.STORED, Outcome.STORED, Outcome.SUPERSEDED,
                                       Outcome.DUPLICATE]
    assert _rows(client, first, second, first + ".reservation", second + ".reservation") == {first: 1, second: 1}


def test_the_events_of_a_batch_share_commits(issuer: tuple[DynasealConfig, TestClient]) -> None:
    cfg, client = issuer
    engine = issuer_state(client.app).engine  # type: ignore[arg-type]
    commits: list[int] = []

    def count(_connection: object) -> None:
        commits.append(1)

    stamp = datetime.now(UTC).strftime("%H%M%S%f")
    ids = [f"req-bc-{stamp}-{i}" for i in range(50)]
    events = [{"id": i, "event": {**usage_body(f"evt-{n}", "jti-bc", None), "request_id": i}}
              for n, i in enumerate(ids)]
    body, headers = signed_callback(callback_secret(cfg), {"type": "batch", "events": events}, msg_id=f"batch_{stamp}")
    event.listen(engine, "commit", count)
    try:
        reply = client.post("/v1/callback/usage", content=body, headers=headers)
    finally:
        event.remove(engine, "commit", count)
    assert reply.status_code == 200 and set(reply.json()["results"].values()) == {"stored"}
    assert list(reply.json()["results"]) == ids  # answered in the batch's order
    assert _rows(client, *ids) == dict.fromkeys(ids, 1)
    # One commit per event (and one more per replaced reservation row) was 100 for this batch.
    assert len(commits) < 10, len(commits)


@pytest.mark.parametrize(("setting", "pragma"), [("normal", 1), ("full", 2)])
def test_sqlite_syncs_per_commit_only_when_asked(tmp_path_factory: pytest.TempPathFactory, setting: str,
                                                 pragma: int) -> None:
    db = tmp_path_factory.mktemp("sync") / "issuer.db"
    engine = make_engine(f"sqlite:///{db}", setting)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("PRAGMA synchronous")).scalar() == pragma
            assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    finally:
        engine.dispose()
