"""The callback bodies the gateway signs and a tenant's backend receives: one pydantic model each.

The consumer builds every body through these models (`Model.body(...)`, then `body_bytes`), the
issuer parses every body with them (`parse_callback`), so the two cannot drift. The wire format
is the seed's (`event_id`, `content`, `tokens`) plus the usage detail; a member a body does not
have is left out, not sent as null (the routed and child-key members appear only where they
apply). Receivers keep members they do not know (a newer gateway may add some), and accept the
seed's minimal body.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

MAX_ID_CHARS = 256
MAX_KEY_ID_CHARS = 128
MAX_WEBHOOK_ID_CHARS = 128
MAX_BATCH_EVENTS = 1000


def _int_as_text(value: object) -> object:
    # The seed's event ids are numbers (`"event_id": 111`); they are kept as text. A bool is no id.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


Count = Annotated[int, Field(strict=True, ge=0)]
Id = Annotated[str, BeforeValidator(_int_as_text), Field(strict=True, max_length=MAX_ID_CHARS)]
KeyId = Annotated[str, BeforeValidator(_int_as_text), Field(strict=True, max_length=MAX_KEY_ID_CHARS)]
# Printable ASCII without space: what Standard Webhooks senders use (msg_…, UUIDs, request ids).
WebhookId = Annotated[str, StringConstraints(strict=True, pattern=rf"^[\x21-\x7e]{{1,{MAX_WEBHOOK_ID_CHARS}}}$")]


class _Body(BaseModel):
    """A callback object: members it does not declare are kept (a newer sender may add some)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    @classmethod
    def body(cls, **members: Any) -> dict[str, Any]:
        """A body of this model as a sender builds it: its members by the model's names, in call order.

        Not validated: it is built on every callback's hot path (a model instance costs ten times the
        dict), from values typed already, and judging it is the receiver's part. A name the model does
        not declare is refused here, so a sender cannot drift from what the receiver parses.
        """
        if not members.keys() <= cls.__pydantic_fields__.keys():
            raise TypeError(f"{cls.__name__} has no member {sorted(members.keys() - cls.model_fields.keys())}")
        return members

    def wire(self) -> dict[str, Any]:
        """A parsed body as JSON-ready data: the members it had, in declaration order (unknown ones after)."""
        return self.model_dump(mode="python", exclude_unset=True)


class PromptTokensDetails(_Body):
    """`usage.prompt_tokens_details`."""

    cached_tokens: Count = 0
    cache_write_tokens: Count = 0


class CompletionTokensDetails(_Body):
    """`usage.completion_tokens_details`."""

    reasoning_tokens: Count = 0


class Usage(_Body):
    """The upstream's token counts in OpenAI's names, whatever API was called."""

    prompt_tokens: Count = 0
    completion_tokens: Count = 0
    total_tokens: Count = 0
    prompt_tokens_details: PromptTokensDetails | None = None
    completion_tokens_details: CompletionTokensDetails | None = None


class Money(_Body):
    """An exact amount: a non-negative decimal string in an ISO 4217 currency."""

    # Plain digits (as `dynaseal.money.pricing.format_amount` writes them): no sign, exponent, NaN or Infinity.
    amount: Annotated[str, StringConstraints(strict=True, max_length=64, pattern=r"^[0-9]+(\.[0-9]+)?$")]
    currency: Annotated[str, StringConstraints(strict=True, pattern=r"^[A-Z]{3}$")]


class UsageCallback(_Body):
    """`type: usage`: what one request spent. Only the seed's members are needed to parse one."""

    type: Literal["usage"] = "usage"
    event_id: Id | None = None
    # Always a string when the gateway sends it: the seed's backend declares `content: str` and refuses null.
    content: Annotated[str, Field(strict=True)] | None = None
    tokens: Count | None = None  # the seed's total; absent, the receiver takes usage.total_tokens
    usage: Usage | None = None
    # Null when the model has no price.
    cost: Money | None = None
    usage_source: str | None = None
    model: str | None = None
    key_id: KeyId | None = None
    sub: Id | None = None
    request_id: str | None = None
    status: int | None = None
    stream: bool | None = None
    started_at: str | None = None
    duration_ms: int | None = None
    cb: Any = None
    # Routed tenants: the upstreams tried in order, the one that served (null: none did).
    upstreams_tried: list[str] | None = None
    upstream: str | None = None
    # The API called: chat_completions, responses, messages or embeddings.
    endpoint: str | None = None
    # A child key's family: the root key (the one the tenant minted) and every key from it down to key_id.
    root_key_id: str | None = None
    chain: list[str] | None = None
    # An older body names the key `jti`; never sent by this gateway.
    jti: KeyId | None = None


class ContentBlockedCallback(_Body):
    """`type: content_blocked`: a tenant's content rule refused a request; which key and rule, never the text."""

    type: Literal["content_blocked"] = "content_blocked"
    rule: str | None = None
    event_id: Id | None = None
    # The seed's members, so a seed backend stores the callback instead of refusing it: nothing said, nothing spent.
    content: str = ""
    tokens: Count = 0
    model: str | None = None
    key_id: KeyId | None = None
    sub: Id | None = None
    request_id: str | None = None
    status: int | None = None
    started_at: str | None = None
    cb: Any = None
    root_key_id: str | None = None
    chain: list[str] | None = None


class BudgetThresholdCallback(_Body):
    """`type: budget_threshold`: a key's spending crossed one of its tenant's thresholds."""

    type: Literal["budget_threshold"] = "budget_threshold"
    event_id: Id | None = None
    key_id: KeyId | None = None
    sub: Id | None = None
    budget: str | None = None  # tokens or cost
    threshold: float | None = None
    # Tokens as a count, money as an amount.
    spent: Count | Money | None = None
    limit: Count | Money | None = None
    cb: Any = None


class BatchEntry(_Body):
    """One event of a batch: the webhook-id it has alone, and its callback object."""

    id: WebhookId
    event: dict[str, Any]


class BatchCallback(_Body):
    """`type: batch`: events of one tenant sent together, each acknowledged by its own id."""

    type: Literal["batch"] = "batch"
    events: Annotated[list[BatchEntry], Field(min_length=1, max_length=MAX_BATCH_EVENTS)]


class BatchReply(_Body):
    """A receiver's 2xx answer to a batch: each event's status by its id (`stored` and `duplicate` acknowledge it)."""

    status: str | None = None
    webhook_id: str | None = None
    results: dict[str, str]


CallbackBody = UsageCallback | ContentBlockedCallback | BudgetThresholdCallback | BatchCallback
_BY_TYPE: dict[str, type[UsageCallback | ContentBlockedCallback | BudgetThresholdCallback | BatchCallback]] = {
    "usage": UsageCallback, "content_blocked": ContentBlockedCallback,
    "budget_threshold": BudgetThresholdCallback, "batch": BatchCallback,
}


def parse_callback(payload: dict[str, Any]) -> CallbackBody:
    """The model of a received callback object, by its `type` (none: the seed's usage callback).

    Raises pydantic's ValidationError for a malformed body (an unknown type included).
    """
    kind = payload.get("type", "usage")
    model = _BY_TYPE.get(kind) if isinstance(kind, str) else None
    if model is None:
        # Validated against the usage model, whose `type` refuses it with a clear location.
        model = UsageCallback
    return model.model_validate(payload)


def body_bytes(body: dict[str, Any]) -> bytes:
    """A callback's JSON body (built by a model's `body`), exactly the bytes that get signed."""
    return orjson.dumps(body)
