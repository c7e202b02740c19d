"""`POST /callback/usage` (also `/api/v1/callback/usage`, `/v1/callback/usage`): signed usage callbacks.

Verified per Standard Webhooks with the tenant's callback secret, then stored once per
`webhook-id`: the gateway delivers at least once, so a repeat must change nothing. Rows go through
the `CallbackWriter` (group commits on one thread); the events of a batch are queued together. Bodies
are parsed with the callback models the gateway builds them with (`dynaseal.contracts.callback_body`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable
from typing import Any

from fastapi import APIRouter, Request
from pydantic import ValidationError
from standardwebhooks.webhooks import WebhookVerificationError

from dynaseal.contracts.callback_body import (
    MAX_WEBHOOK_ID_CHARS,
    BatchCallback,
    BatchReply,
    BudgetThresholdCallback,
    CallbackBody,
    ContentBlockedCallback,
    UsageCallback,
    parse_callback,
)
from dynaseal.logs import redact
from issuer_api import reservation_rows
from issuer_api.callback_writer import Outcome
from issuer_api.deps import StateDep
from issuer_api.errors import ApiError, IssuerError, invalid_request
from issuer_api.store import utcnow

log = logging.getLogger("issuer_api.callbacks")
router = APIRouter(tags=["callbacks"])

MAX_BODY_BYTES = 1 << 20
# Printable ASCII without space: what Standard Webhooks senders use (msg_…, UUIDs, request ids).
_WEBHOOK_ID = re.compile(rf"^[\x21-\x7e]{{1,{MAX_WEBHOOK_ID_CHARS}}}$")
PRINTED_CONTENT_CHARS = 200


def refusal_of(exc: ValidationError) -> ApiError:
    """A 400 naming the first member of a body the callback models refuse (never quoting its value)."""
    errors = exc.errors()
    if not errors:
        return invalid_request("malformed callback body")
    param = ".".join(str(part) for part in errors[0]["loc"]) or None
    message = errors[0]["msg"]
    return invalid_request(f"{param}: {message}" if param else message, param)


def parse_body(payload: dict[str, Any]) -> CallbackBody:
    """The callback model of a body (`dynaseal.contracts.callback_body`, the one the gateway builds); 400 if bad."""
    try:
        return parse_callback(payload)
    except ValidationError as exc:
        raise refusal_of(exc) from None


def tokens_of(callback: UsageCallback) -> int:
    """The seed's `tokens`, or the usage's total when a body has only that."""
    if callback.tokens is not None:
        return callback.tokens
    return callback.usage.total_tokens if callback.usage is not None else 0


def row_values(webhook_id: str, callback: UsageCallback, payload: dict[str, Any]) -> dict[str, Any]:
    """The callbacks-table row of one callback (`usage` and the whole body kept as they came)."""
    usage = payload.get("usage")
    return {"webhook_id": webhook_id, "event_id": callback.event_id, "jti": callback.key_id or callback.jti,
            "sub": callback.sub, "tokens": tokens_of(callback), "usage": usage if isinstance(usage, dict) else None,
            "content": callback.content, "payload": payload, "received_at": utcnow(),
            "cost_amount": callback.cost.amount if callback.cost else None,
            "cost_currency": callback.cost.currency if callback.cost else None}


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
    cost = f" cost={callback.cost.amount} {callback.cost.currency}" if callback.cost else ""
    return redact(f"callback event_id={callback.event_id} tokens={tokens_of(callback)}{cost} content={content!r}")


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
        batch = parse_body(payload)
        assert isinstance(batch, BatchCallback)
        return BatchReply.body(status="batch", webhook_id=webhook_id, results=await store_batch(state, batch))
    status = await store_one(state, webhook_id, payload)
    return {"status": status, "webhook_id": webhook_id}


def _noted(callback: CallbackBody) -> bool:
    """Print a callback that is not usage (nothing to store); False for a usage callback."""
    if isinstance(callback, BudgetThresholdCallback):
        # Not usage: shown, not stored with the usage rows (its webhook-id is stable, so a repeat is harmless).
        print(redact(f"budget threshold: key_id={callback.key_id} {callback.budget} budget "
                     f"crossed {callback.threshold}"), flush=True)
        return True
    if isinstance(callback, ContentBlockedCallback):
        # A request the tenant's content rule refused: no usage, only which key and rule (never the text).
        print(redact(f"content blocked: key_id={callback.key_id} rule={callback.rule}"), flush=True)
        return True
    return False


def _usage_of(payload: dict[str, Any]) -> UsageCallback | None:
    """The usage callback of a body (None: noted, nothing to store); ApiError (400) if malformed."""
    callback = parse_body(payload)
    if _noted(callback):
        return None
    if not isinstance(callback, UsageCallback):  # a batch inside a batch
        raise invalid_request("a batch's events are single callbacks", "type")
    return callback


def _report(webhook_id: str, callback: UsageCallback, outcome: Outcome) -> None:
    if outcome is not Outcome.STORED:
        log.info(f"{outcome.value} callback ignored", extra={"webhook_id": webhook_id, "event_id": callback.event_id})
        return
    log.info("callback stored", extra={"webhook_id": webhook_id, "event_id": callback.event_id,
                                       "tokens": tokens_of(callback), "jti": callback.key_id or callback.jti})
    # The seed's demo shows the backend printing event_id, tokens and content.
    print(_human_line(callback), flush=True)


async def _write(state: StateDep, webhook_id: str, payload: dict[str, Any], callback: UsageCallback) -> Outcome:
    row = reservation_rows.callback_row(webhook_id, payload, row_values(webhook_id, callback, payload))
    return await state.callbacks.write(row)


async def store_one(state: StateDep, webhook_id: str, payload: dict[str, Any]) -> str:
    """Note or store one callback object: noted, stored, duplicate or superseded; ApiError (400) if malformed."""
    callback = _usage_of(payload)
    if callback is None:
        return "noted"
    outcome = await _write(state, webhook_id, payload, callback)
    _report(webhook_id, callback, outcome)
    return outcome.value


async def _store_parsed(state: StateDep, webhook_id: str, payload: dict[str, Any], callback: UsageCallback) -> str:
    try:
        outcome = await _write(state, webhook_id, payload, callback)
    except Exception:
        # Unacknowledged: the gateway sends this event again alone, where a failure is a 5xx it retries.
        log.exception("batched callback not stored", extra={"webhook_id": webhook_id})
        return "error"
    _report(webhook_id, callback, outcome)
    return outcome.value


async def store_batch(state: StateDep, batch: BatchCallback) -> dict[str, str]:
    """Store each event of a signed batch by its own id; its status by id (`refused` for a malformed one).

    The batch as a whole is refused (400) only when it is not a list of `{"id", "event"}` objects (the
    model's check); one bad event is refused alone, and the gateway sends it again alone. The events'
    rows are queued together, so they share the writer's transactions instead of waiting for one commit each.
    """
    results: dict[str, str] = {}
    pending: dict[str, Awaitable[str]] = {}
    for item in batch.events:
        if item.id in results:
            continue
        try:
            callback = _usage_of(item.event)
        except ApiError as exc:
            log.info("batched callback refused", extra={"webhook_id": item.id, "error": str(exc)})
            results[item.id] = "refused"
            continue
        if callback is None:
            results[item.id] = "noted"
            continue
        results[item.id] = ""  # keeps the batch's order in the answer
        pending[item.id] = _store_parsed(state, item.id, item.event, callback)
    for webhook_id, status in zip(pending, await asyncio.gather(*pending.values()), strict=True):
        results[webhook_id] = status
    return results


router.add_api_route("/callback/usage", receive_usage, methods=["POST"], summary="Receive a signed usage callback")
# The seed's callback_url (`/v1/callback/usage` at the root), served at the root only.
root_router = APIRouter(tags=["callbacks"])
root_router.add_api_route("/v1/callback/usage", receive_usage, methods=["POST"],
                          summary="Receive a signed usage callback (seed path)")
