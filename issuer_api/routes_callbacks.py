"""`POST /callback/usage` (seed) and `/v1/callback/usage`: the gateway's signed usage callbacks.

Verified per Standard Webhooks with the tenant's callback secret, then stored once per
`webhook-id`: the gateway delivers at least once, so a repeat must change nothing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from standardwebhooks.webhooks import WebhookVerificationError
from starlette.concurrency import run_in_threadpool

from dynaseal.logs import redact
from issuer_api.deps import StateDep
from issuer_api.errors import ApiError, invalid_request
from issuer_api.state import IssuerState
from issuer_api.store import Callback

log = logging.getLogger("issuer_api.callbacks")
router = APIRouter(tags=["callbacks"])

MAX_BODY_BYTES = 1 << 20
MAX_ID_CHARS = 256
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


def _optional_str(payload: dict[str, Any], name: str, limit: int) -> str | None:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int) or len(str(value)) > limit:
        raise invalid_request(f"{name} must be a string of at most {limit} characters", name)
    return str(value)


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
                         _optional_str(payload, "sub", MAX_ID_CHARS))


def _store_once(state: IssuerState, webhook_id: str, callback: UsageCallback,
                payload: dict[str, Any]) -> bool:
    """Insert the callback unless this webhook-id was stored before; True if stored now."""
    try:
        with state.sessions.begin() as db:
            if db.scalar(select(Callback.id).where(Callback.webhook_id == webhook_id)) is not None:
                return False
            db.add(Callback(webhook_id=webhook_id, event_id=callback.event_id, jti=callback.jti,
                            sub=callback.sub, tokens=callback.tokens, usage=callback.usage,
                            content=callback.content, payload=payload))
    except IntegrityError:  # a concurrent delivery of the same webhook-id won the race
        return False
    return True


def _human_line(callback: UsageCallback) -> str:
    content = callback.content or ""
    if len(content) > PRINTED_CONTENT_CHARS:
        content = content[:PRINTED_CONTENT_CHARS] + "…"
    return redact(f"callback event_id={callback.event_id} tokens={callback.tokens} content={content!r}")


async def receive_usage(request: Request, state: StateDep) -> dict[str, str]:
    """Verify, parse and store one usage callback; answer 2xx so the gateway stops retrying."""
    if state.webhook is None:
        raise ApiError(503, "callback_not_configured", "this tenant has no callback secret configured")
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, "request_too_large", f"callback body above {MAX_BODY_BYTES} bytes")
    try:
        state.webhook.verify(raw, dict(request.headers), json_parse=False)
    except (WebhookVerificationError, ValueError, TypeError):
        # Missing headers, a bad signature and a stale timestamp look alike to the sender on purpose.
        raise ApiError(401, "invalid_signature", "webhook signature is missing, invalid or too old") from None
    webhook_id = request.headers["webhook-id"]
    if len(webhook_id) > MAX_ID_CHARS:
        raise invalid_request(f"webhook-id longer than {MAX_ID_CHARS} characters", "webhook-id")
    try:
        payload = json.loads(raw)
    except ValueError:
        raise invalid_request("callback body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise invalid_request("callback body must be a JSON object")
    callback = parse_callback(payload)
    stored = await run_in_threadpool(_store_once, state, webhook_id, callback, payload)
    if not stored:
        log.info("duplicate callback ignored",
                 extra={"webhook_id": webhook_id, "event_id": callback.event_id})
        return {"status": "duplicate", "webhook_id": webhook_id}
    log.info("callback stored", extra={"webhook_id": webhook_id, "event_id": callback.event_id,
                                       "tokens": callback.tokens, "jti": callback.jti})
    # The seed's demo shows the backend printing event_id, tokens and content.
    print(_human_line(callback), flush=True)
    return {"status": "stored", "webhook_id": webhook_id}


for _path in ("/callback/usage", "/v1/callback/usage"):
    router.add_api_route(_path, receive_usage, methods=["POST"], summary="Receive a signed usage callback")
