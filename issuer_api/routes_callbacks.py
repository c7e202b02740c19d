"""`POST /callback/usage` (also `/api/v1/callback/usage`, `/v1/callback/usage`): signed usage callbacks.

Verified per Standard Webhooks with the tenant's callback secret, then stored once per
`webhook-id`: the gateway delivers at least once, so a repeat must change nothing. Rows go through
the `CallbackWriter` (group commits on one thread); the events of a batch are queued together.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from fastapi import APIRouter, Request
from standardwebhooks.webhooks import WebhookVerificationError

from dynaseal.logs import redact
from issuer_api import reservation_rows
from issuer_api.callback_writer import Outcome
from issuer_api.deps import StateDep
from issuer_api.errors import ApiError, IssuerError, invalid_request
from issuer_api.store import utcnow

log = logging.getLogger("issuer_api.callbacks")
router = APIRouter(tags=["callbacks"])

MAX_BODY_BYTES = 1 << 20
MAX_ID_CHARS = 256
MAX_WEBHOOK_ID_CHARS = 128
# Printable ASCII without space: what Standard Webhooks senders use (msg_…, UUIDs, request ids).
_WEBHOOK_ID = re.compile(rf"^[\x21-\x7e]{{1,{MAX_WEBHOOK_ID_CHARS}}}$")
PRINTED_CONTENT_CHARS = 200


@dataclass(frozen=True, slots=True)
class UsageCallback:
    """The fields of a callback body the issuer indexes (the whole body is kept as `payload`)."""

    event_id: str | None
    tokens: int
    usage: dict[str, Any] | None
    content: str | None
    jti: str | None
    sub: str | None
    # The callback's `cost`: (exact decimal string, currency), or None (an unpriced model, an older gateway).
    cost: tuple[str, str] | None = None


def _optional_str(payload: dict[str, Any], name: str, limit: int) -> str | None:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int) or len(str(value)) > limit:
        raise invalid_request(f"{name} must be a string of at most {limit} characters", name)
    return str(value)


_CURRENCY = re.compile(r"^[A-Z]{3}$")


def parse_cost(payload: dict[str, Any]) -> tuple[str, str] | None:
    """The `cost: {"amount": "0.000123", "currency": "USD"}` of a callback, kept as the exact string; 400 if bad."""
    cost = payload.get("cost")
    if cost is None:
        return None
    if not isinstance(cost, dict) or not isinstance(cost.get("amount"), str) or \
            not isinstance(cost.get("currency"), str) or not _CURRENCY.match(cost["currency"]):
        raise invalid_request('cost must be {"amount": "<decimal string>", "currency": "<ISO 4217>"}', "cost")
    amount = cost["amount"]
    try:
        valid = len(amount) <= 64 and Decimal(amount).is_finite() and Decimal(amount) >= 0
    except InvalidOperation:
        valid = False
    if not valid:
        raise invalid_request("cost.amount must be a non-negative decimal string", "cost")
    return amount, cost["currency"]


def parse_callback(payload: dict[str, Any]) -> UsageCallback:
    """Pick the indexed fields out of a callback body; 400 on a wrong type."""
    usage = payload.get("usage")
    if usage is not None and not isinstance(usage, dict):
        raise invalid_request("usage must be an object", "usage")
    tokens = payload.get("tokens")
    if tokens is None and usage is not None:  # the seed's `tokens` is the total
        tokens = usage.get("total_tokens", 0)
    tokens = 0 if tokens is None else tokens
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise invalid_request("tokens must be a non-negative integer", "tokens")
    content = payload.get("content")
    if content is not None and not isinstance(content, str):
        raise invalid_request("content must be a string", "content")
    jti = _optional_str(payload, "key_id", 128) or _optional_str(payload, "jti", 128)
    return UsageCallback(_optional_str(payload, "event_id", MAX_ID_CHARS), tokens, usage, content, jti,
                         _optional_str(payload, "sub", MAX_ID_CHARS), parse_cost(payload))


def row_values(webhook_id: str, callback: UsageCallback, payload: dict[str, Any]) -> dict[str, Any]:
    """The callbacks-table row of one callback."""
    return {"webhook_id": webhook_id, "event_id": callback.event_id, "jti": callback.jti, "sub": callback.sub,
            "tokens": callback.tokens, "usage": callback.usage, "content": callback.content,
            "payload": payload, "received_at": utcnow(),
            "cost_amount": callback.cost[0] if callback.cost else None,
            "cost_currency": callback.cost[1] if callback.cost else None}


def webhook_id_of(request: Request) -> str | None:
    """The request's webhook-id if it is well formed, None if absent; 400 if malformed."""
    webhook_id = request.headers.get("webhook-id")
    if webhook_id is not None and not _WEBHOOK_ID.match(webhook_id):
        raise invalid_request(f"webhook-id must be 1 to {MAX_WEBHOOK_ID_CHARS} printable ASCII characters",
                              "webhook-id", IssuerError.INVALID_WEBHOOK_ID)
    return webhook_id


def _human_line(callback: UsageCallback) -> str:
    content = callback.content or ""
    if len(content) > PRINTED_CONTENT_CHARS:
        content = content[:PRINTED_CONTENT_CHARS] + "…"
    cost = f" cost={callback.cost[0]} {callback.cost[1]}" if callback.cost else ""
    return redact(f"callback event_id={callback.event_id} tokens={callback.tokens}{cost} content={content!r}")


async def receive_usage(request: Request, state: StateDep) -> dict[str, Any]:
    """Verify, parse and store one usage callback; answer 2xx so the gateway stops retrying."""
    if state.webhook is None:
        raise ApiError(503, IssuerError.CALLBACK_NOT_CONFIGURED, "this tenant has no callback secret configured")
    # Checked before anything else: it is signed, stored and logged, so odd bytes must stop here.
    webhook_id = webhook_id_of(request)
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, IssuerError.REQUEST_TOO_LARGE, f"callback body above {MAX_BODY_BYTES} bytes")
    try:
        state.webhook.verify(raw, dict(request.headers), json_parse=False)
    except (WebhookVerificationError, ValueError, TypeError):
        # Missing headers, a bad signature and a stale timestamp look alike to the sender on purpose.
        raise ApiError(401, IssuerError.INVALID_SIGNATURE, "webhook signature is missing, invalid or too old") from None
    assert webhook_id is not None  # verify() refuses a request without one
    try:
        payload = json.loads(raw)
    except ValueError:
        raise invalid_request("callback body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise invalid_request("callback body must be a JSON object")
    if payload.get("type") == "batch":
        return {"status": "batch", "webhook_id": webhook_id, "results": await store_batch(state, payload)}
    status = await store_one(state, webhook_id, payload)
    return {"status": status, "webhook_id": webhook_id}


def _noted(payload: dict[str, Any]) -> bool:
    """Print a callback that is not usage (nothing to store); False for a usage callback."""
    if payload.get("type") == "budget_threshold":
        # Not usage: shown, not stored with the usage rows (its webhook-id is stable, so a repeat is harmless).
        print(redact(f"budget threshold: key_id={payload.get('key_id')} {payload.get('budget')} budget "
                     f"crossed {payload.get('threshold')}"), flush=True)
        return True
    if payload.get("type") == "content_blocked":
        # A request the tenant's content rule refused: no usage, only which key and rule (never the text).
        print(redact(f"content blocked: key_id={payload.get('key_id')} rule={payload.get('rule')}"), flush=True)
        return True
    return False


def _report(webhook_id: str, callback: UsageCallback, outcome: Outcome) -> None:
    if outcome is not Outcome.STORED:
        log.info(f"{outcome.value} callback ignored", extra={"webhook_id": webhook_id, "event_id": callback.event_id})
        return
    log.info("callback stored", extra={"webhook_id": webhook_id, "event_id": callback.event_id,
                                       "tokens": callback.tokens, "jti": callback.jti})
    # The seed's demo shows the backend printing event_id, tokens and content.
    print(_human_line(callback), flush=True)


async def store_one(state: StateDep, webhook_id: str, payload: dict[str, Any]) -> str:
    """Note or store one callback object: noted, stored, duplicate or superseded; ApiError (400) if malformed."""
    if _noted(payload):
        return "noted"
    callback = parse_callback(payload)
    outcome = await _write(state, webhook_id, payload, callback)
    _report(webhook_id, callback, outcome)
    return outcome.value


async def _write(state: StateDep, webhook_id: str, payload: dict[str, Any], callback: UsageCallback) -> Outcome:
    row = reservation_rows.callback_row(webhook_id, payload, row_values(webhook_id, callback, payload))
    return await state.callbacks.write(row)


MAX_BATCH_EVENTS = 1000


async def _store_parsed(state: StateDep, webhook_id: str, payload: dict[str, Any], callback: UsageCallback) -> str:
    try:
        outcome = await _write(state, webhook_id, payload, callback)
    except Exception:
        # Unacknowledged: the gateway sends this event again alone, where a failure is a 5xx it retries.
        log.exception("batched callback not stored", extra={"webhook_id": webhook_id})
        return "error"
    _report(webhook_id, callback, outcome)
    return outcome.value


async def store_batch(state: StateDep, payload: dict[str, Any]) -> dict[str, str]:
    """Store each event of a signed batch by its own id; its status by id (`refused` for a malformed one).

    The batch as a whole is refused (400) only when it is not a list of `{"id", "event"}` objects;
    one bad event is refused alone, and the gateway sends it again alone. The events' rows are queued
    together, so they share the writer's transactions instead of waiting for one commit each.
    """
    events = payload.get("events")
    if not isinstance(events, list) or not 0 < len(events) <= MAX_BATCH_EVENTS:
        raise invalid_request(f"events must be a list of 1 to {MAX_BATCH_EVENTS} objects", "events")
    for item in events:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str) or \
                not _WEBHOOK_ID.match(item["id"]) or not isinstance(item.get("event"), dict):
            raise invalid_request('each batch entry must be {"id": "<webhook-id>", "event": {...}}', "events")
    results: dict[str, str] = {}
    pending: dict[str, Awaitable[str]] = {}
    for item in events:
        webhook_id, event = item["id"], item["event"]
        if webhook_id in results:
            continue
        if _noted(event):
            results[webhook_id] = "noted"
            continue
        try:
            callback = parse_callback(event)
        except ApiError as exc:
            log.info("batched callback refused", extra={"webhook_id": webhook_id, "error": str(exc)})
            results[webhook_id] = "refused"
            continue
        results[webhook_id] = ""  # keeps the batch's order in the answer
        pending[webhook_id] = _store_parsed(state, webhook_id, event, callback)
    for webhook_id, status in zip(pending, await asyncio.gather(*pending.values()), strict=True):
        results[webhook_id] = status
    return results


router.add_api_route("/callback/usage", receive_usage, methods=["POST"], summary="Receive a signed usage callback")
# The seed's callback_url (`/v1/callback/usage` at the root), served at the root only.
root_router = APIRouter(tags=["callbacks"])
root_router.add_api_route("/v1/callback/usage", receive_usage, methods=["POST"],
                          summary="Receive a signed usage callback (seed path)")
