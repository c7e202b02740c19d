"""The operator's hands: the DLQ by reason, one entry replayed, a key revoked by its id."""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from kafka.errors import KafkaError
from pydantic import BaseModel, Field
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool

from admin_api.auth import require_admin
from admin_api.console_context import ConsoleContext, console_context
from dynaseal.ledger.revocation import revoke_at
from dynaseal.usage import dlq_entries
from dynaseal.usage_store import replays

log = logging.getLogger("admin_api.operations")
router = APIRouter(dependencies=[Depends(require_admin)], tags=["operations"])
Context = Annotated[ConsoleContext, Depends(console_context)]
ENTRY_ID = re.compile(r"(\d{1,6}):(\d{1,19})")
# Ids as keys carry them: printable, no spaces or control characters (they become Redis key parts).
KEY_ID = r"^[\x21-\x7e]{1,128}$"
REDIS_TIMEOUT_S = 3.0


def _unavailable(what: str) -> HTTPException:
    return HTTPException(503, f"{what} is not reachable; nothing was changed, try again")


@router.get("/dlq")
async def list_dlq(context: Context, reason: Annotated[str | None, Query(max_length=128)] = None,
                   tenant: Annotated[str | None, Query(max_length=128)] = None) -> dict[str, Any]:
    """The DLQ's entries (of one reason, one tenant) and how many there are per reason."""
    try:
        entries = await run_in_threadpool(dlq_entries.read_entries, context.kafka_bootstrap)
    except (KafkaError, OSError):
        raise _unavailable("the broker") from None
    done = await run_in_threadpool(replays.replayed, context.engine)
    listed = []
    for entry in entries:
        summary = entry.summary()
        summary["replayed_at_ms"] = done.get(summary["id"])
        listed.append(summary)
    if tenant is not None:
        listed = [e for e in listed if e.get("tenant") == tenant]
    by_reason = Counter(e["reason"] for e in listed)
    if reason is not None:
        listed = [e for e in listed if e["reason"] == reason]
    return {"by_reason": dict(sorted(by_reason.items())), "entries": listed}


@router.post("/dlq/{entry_id}/replay", status_code=202)
async def replay_dlq_entry(entry_id: str, context: Context) -> dict[str, Any]:
    """Send one entry's callback again (through the callback consumer); once per entry."""
    match = ENTRY_ID.fullmatch(entry_id)
    if match is None:
        raise HTTPException(400, "an entry id is `<partition>:<offset>`, as GET /dlq lists it")
    partition, offset = int(match[1]), int(match[2])
    try:
        entry = await run_in_threadpool(dlq_entries.read_entry, context.kafka_bootstrap, partition, offset)
    except (KafkaError, OSError):
        raise _unavailable("the broker") from None
    if entry is None or entry.event is None:
        raise HTTPException(404, f"no readable DLQ entry {entry_id}")
    if not entry.replayable:
        raise HTTPException(409, "a budget-threshold entry is replayed with `dynaseal dlq replay`")
    event = entry.event
    if not await run_in_threadpool(replays.claim, context.engine, entry_id, event.request_id, event.tenant):
        raise HTTPException(409, f"DLQ entry {entry_id} was replayed already")
    try:
        await run_in_threadpool(dlq_entries.replay, context.kafka_bootstrap, entry)
    except (KafkaError, OSError):
        await run_in_threadpool(replays.release, context.engine, entry_id)
        raise _unavailable("the broker") from None
    log.info("DLQ entry replayed", extra={"entry": entry_id, "request_id": event.request_id, "tenant": event.tenant})
    return {"replayed": {**entry.summary(), "replayed_at_ms": int(time.time() * 1000)}}


class Revocation(BaseModel):
    """A key to refuse from now on: its tenant and key id (`jti`); a child key also names its ancestors."""

    tenant: str = Field(pattern=KEY_ID)
    key_id: str = Field(pattern=KEY_ID)
    # A child key's ancestors from the root down (its callbacks' `chain` without its own id).
    ancestors: list[Annotated[str, Field(pattern=KEY_ID)]] = Field(default_factory=list, max_length=16)


@router.post("/revocations")
async def revoke_key(body: Revocation, context: Context) -> dict[str, Any]:
    """Revoke a key by id: the gateway's Redis marker authz checks on every request, for as long as the
    tenant's keys can live (every key minted under it is refused with it)."""
    lifetime_s = context.key_lifetime_s(body.tenant)
    expires = time.time() + lifetime_s
    try:
        await revoke_at(context.redis_url, REDIS_TIMEOUT_S, body.tenant, body.key_id, expires, tuple(body.ancestors))
    except (RedisError, OSError) as exc:
        log.warning("revocation failed", extra={"jti": body.key_id, "error": type(exc).__name__})
        raise _unavailable("the gateway's revocation store") from None
    log.info("key revoked", extra={"tenant": body.tenant, "jti": body.key_id})
    return {"tenant": body.tenant, "key_id": body.key_id, "revoked": True, "marker_ttl_s": lifetime_s}
