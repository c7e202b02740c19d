"""A usage event as the tenant's callback: the JSON body and its Standard Webhooks signature.

The body is built through the callback models of `dynaseal.contracts.callback_body`, the ones the
issuer parses with.

`webhook-id` is the event's request_id, so every retry and every redelivery after a crash carries
the same id and the receiver can store it once. Each attempt is signed with a fresh timestamp
(receivers reject timestamps older than five minutes).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from standardwebhooks import Webhook

from dynaseal.contracts.callback_body import (
    CompletionTokensDetails,
    ContentBlockedCallback,
    Money,
    PromptTokensDetails,
    Usage,
    UsageCallback,
    body_bytes,
)
from dynaseal.pb import UsageEvent

# Statuses worth retrying besides 5xx: the receiver timed out, or asked us to slow down.
RETRYABLE_STATUSES = frozenset({408, 429})


def _upstreams(event: UsageEvent) -> dict[str, Any]:
    if not event.upstreams_tried:
        return {}
    tried = event.upstreams_tried.split(",")
    unserved = event.given_back or event.status >= 500 or event.status == 429
    return {"upstreams_tried": tried, "upstream": None if unserved else tried[-1]}


def _echoed(event: UsageEvent) -> tuple[Any, dict[str, Any]]:
    """What every callback echoes of the key: its `cb` object, and its family when it is a child key."""
    cb: Any = {}
    if event.cb_json:
        try:
            cb = orjson.loads(event.cb_json)
        except orjson.JSONDecodeError:
            cb = {}
    family = {"root_key_id": event.root_jti, "chain": list(event.chain)} if event.chain else {}
    return cb, family


def blocked_payload(event: UsageEvent) -> dict[str, Any]:
    """The callback of a content refusal: which key, which rule, when; the seed's fields empty."""
    cb, family = _echoed(event)
    return ContentBlockedCallback.body(
        type="content_blocked", rule=event.content_rule, event_id=event.event_id,
        # The seed's fields, so a seed backend stores the callback instead of refusing it: nothing said, nothing spent.
        content="", tokens=0, model=event.model, key_id=event.jti, sub=event.sub if event.HasField("sub") else None,
        request_id=event.request_id, status=event.status, started_at=event.started_at, cb=cb, **family)


def callback_payload(event: UsageEvent, include_content: bool) -> dict[str, Any]:
    """The callback object: the seed's fields (event_id, content, tokens) plus the usage detail."""
    if event.content_rule:
        return blocked_payload(event)
    cb, family = _echoed(event)
    usage = Usage.body(
        prompt_tokens=event.prompt_tokens, completion_tokens=event.completion_tokens, total_tokens=event.total_tokens,
        prompt_tokens_details=PromptTokensDetails.body(cached_tokens=event.cached_tokens,
                                                       cache_write_tokens=event.cache_write_tokens),
        completion_tokens_details=CompletionTokensDetails.body(reasoning_tokens=event.reasoning_tokens))
    return UsageCallback.body(
        type="usage", event_id=event.event_id,
        # Always a string: the seed's backend declares `content: str` and refuses null (a 422, i.e. a DLQ).
        content=event.content if include_content and event.HasField("content") else "",
        tokens=event.total_tokens, usage=usage,
        # An exact decimal string in the tenant's currency; null when the model has no price.
        cost=None if event.unpriced or not event.currency else Money.body(amount=event.cost, currency=event.currency),
        usage_source=event.usage_source, model=event.model, key_id=event.jti,
        sub=event.sub if event.HasField("sub") else None, request_id=event.request_id, status=event.status,
        stream=event.stream, started_at=event.started_at, duration_ms=event.duration_ms, cb=cb,
        # Routed tenants: the upstreams tried in order, the one that served (null: none did).
        **_upstreams(event),
        # The API called: chat_completions, responses, messages or embeddings.
        endpoint=event.endpoint or "chat_completions",
        # A child key's callback also names its family: the root key and every key from it down to key_id.
        **family)


def callback_body(event: UsageEvent, include_content: bool) -> bytes:
    """The callback's JSON body, exactly the bytes that get signed."""
    return body_bytes(callback_payload(event, include_content))


@dataclass(frozen=True)
class CallbackSigner:
    """Signs callback bodies with one tenant's `whsec_` secret."""

    webhook: Webhook
    # During a secret's rotation the previous secrets sign too (space-separated, as Standard Webhooks allows).
    previous: tuple[Webhook, ...] = ()

    @classmethod
    def from_secret(cls, secret: str, previous: tuple[str, ...] = ()) -> CallbackSigner:
        """A signer for a Standard Webhooks secret (`whsec_<base64>`), plus any still in their grace period."""
        return cls(Webhook(secret), tuple(Webhook(old) for old in previous if old != secret))

    def headers(self, webhook_id: str, body: bytes, now: datetime | None = None) -> dict[str, str]:
        """The request headers of one delivery attempt: content type, webhook-id/-timestamp/-signature."""
        stamp = (now or datetime.now(UTC)).astimezone(UTC)
        text = body.decode()
        signature = " ".join(hook.sign(webhook_id, stamp, text) for hook in (self.webhook, *self.previous))
        return {"content-type": "application/json", "webhook-id": webhook_id,
                "webhook-timestamp": str(int(stamp.timestamp())), "webhook-signature": signature}


def is_retryable(status: int) -> bool:
    """Whether a receiver's HTTP status means "try again later" (5xx, 408, 429)."""
    return status >= 500 or status in RETRYABLE_STATUSES
