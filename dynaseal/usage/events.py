"""Envoy access-log line → `dynaseal.v1.UsageEvent`: which requests become events, and with what usage.

Each line is one request (the JSON format `dynaseal.contracts.usage_record` defines). The rules, in order;
the first that applies decides:

1. Not admitted → no event. The line lacks `tenant` or `jti`, carries a `deny_code`, or its
   `details` start with `ext_authz` (denied, or authz unavailable). Nothing was reserved. Except: a
   refusal by a tenant's content rule becomes a `content_rule` event, no usage (dynaseal.usage.blocked).
2. A stream cut short — a response flag of a disconnect, reset or timeout (`CUT_FLAGS`: the client
   left, DC; the upstream reset, UR/UC; Envoy reset it, LR, ...) → the larger of what authz reserved
   ("reserved") and any usage seen ("upstream"). sse_to_metadata keeps the last usage it read, which
   is the final one only on a stream that ended: an upstream that puts the running usage in every
   chunk (vLLM's `continuous_usage_stats`) would otherwise bill a client that leaves early only
   what it had read. The client cannot choose its metering by leaving.
3. The upstream reported usage (`total_tokens` present: json_to_metadata / sse_to_metadata put it
   there, the last one read: on a whole stream the usage-only event or the last before `[DONE]`)
   → `usage_source` "upstream", the counts from the log.
4. The upstream answered an error (status ≥ 400) → "none", every count 0: settling with 0
   releases the reservation, and the tenant still gets a callback with the status. Envoy's
   `response_payload_too_large` is the exception: the upstream did generate, so rule 5 applies.
5. Otherwise the usage is unknown — the client disconnected before the usage chunk (flags `DC`,
   tokens null), the upstream stream broke, or no status was sent → "reserved": total_tokens is
   what authz reserved (never under-bill), prompt and completion 0.

Content (tenants whose callback has `include_content`): the Lua filter logs the response body,
base64, at most 64 KiB, as `content_b64`; `content_of` turns it into the assistant text of
choice 0 (SSE `delta.content` joined, or the JSON `message.content`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import time
import zlib
from typing import Any

import orjson

from dynaseal.contracts.usage_record import copied_fields, log_count
from dynaseal.money.pricing import Price, TokenUsage, format_amount, from_micros, to_micros
from dynaseal.pb import UsageEvent
from dynaseal.usage.blocked import blocked_event
from dynaseal.usage.endpoint_content import event_text, json_answer
from dynaseal.usage.price_message import to_message

UPSTREAM, RESERVED, NONE = "upstream", "reserved", "none"
# Endpoints that generate nothing (authz reserved nothing for them): no usage event.
UNMETERED_ENDPOINTS = frozenset({"messages_count_tokens"})
# An error the upstream answered itself: it generated nothing billable, the reservation is released.
_UPSTREAM_ANSWERED = "via_upstream"
# Envoy's own replies for a request the upstream never received (connect failure, no endpoint,
# a body Envoy never finished reading): nothing was sent, nothing is billed. Every other local
# reply after authz admitted the request (an idle or response timeout, a reset mid-generation, a
# payload too large for the metadata filters) may follow a generation the provider bills: such a
# request is billed its reservation, never zero.
_NEVER_SENT_DETAILS = ("upstream_reset_before_response_started{connection_failure",
                       "upstream_reset_before_response_started{connection_timeout",
                       "upstream_reset_before_response_started{overflow", "no_healthy_upstream",
                       "cluster_not_found", "route_not_found", "request_overall_timeout",
                       "request_headers_timeout", "request_payload_too_large", "lua_respond")

# Envoy response flags (%RESPONSE_FLAGS%, comma-separated) of a response cut short: the client left
# (DC), reset its HTTP/2 stream (DR) or broke the protocol (DPE); the upstream closed or reset (UC, UR)
# or broke the protocol (UPE); Envoy reset it (LR) or a timeout or limit ended it (UT, SI, DT, UMSDR,
# OM). After any of these the last usage a stream carried need not be its final one.
CUT_FLAGS = frozenset({"DC", "DR", "DPE", "UC", "UR", "UPE", "LR", "UT", "SI", "DT", "UMSDR", "OM"})

# Printable ASCII id characters, bounded: what authz mints (UUID4) and nothing a header could smuggle.
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def _text(value: Any) -> str:
    return "" if value is None else str(value)


_count = log_count


def _admitted(record: dict[str, Any]) -> bool:
    return bool(record.get("tenant")) and bool(record.get("jti")) and not record.get("deny_code") \
        and not _text(record.get("details")).startswith("ext_authz")


def cut_short(record: dict[str, Any]) -> bool:
    """Whether the line's response was a stream that a disconnect, reset or timeout ended early."""
    flags = {flag.strip() for flag in _text(record.get("flags")).split(",")}
    return record.get("stream") is True and bool(flags & CUT_FLAGS)


def _usage(record: dict[str, Any], status: int, reserved: int) -> tuple[str, int, int, int]:
    """(usage_source, prompt, completion, total) by rules 2–5."""
    prompt, completion, total = (_count(record.get(k)) for k in ("prompt_tokens", "completion_tokens",
                                                                   "total_tokens"))
    if record.get("endpoint") == "messages" and prompt is not None:
        # Anthropic's input_tokens leave out what was read from or written to the prompt cache; the
        # prompt (OpenAI's meaning, which the price lines use) is all three.
        prompt += (_count(record.get("cached_tokens")) or 0) + (_count(record.get("cache_write_tokens")) or 0)
    if total is None and prompt is not None and completion is not None:
        total = prompt + completion
    if cut_short(record):
        if total is not None and total > reserved:
            return UPSTREAM, prompt or 0, completion or 0, total
        return RESERVED, 0, 0, reserved
    if total is not None:
        # A try that timed out before this one may have generated at its provider too: the served usage plus
        # the reservation (never under-bill; the tenant sees it in the callback as total > prompt + completion).
        extra = reserved if record.get("overdue") is True else 0
        return UPSTREAM, prompt or 0, completion or 0, total + extra
    if record.get("overdue") is True:  # a try timed out at a provider that may have generated: as a 504 is
        return RESERVED, 0, 0, reserved
    if record.get("given_back") is True:  # no provider served it: given back at once, nothing billed
        return NONE, 0, 0, 0
    details = _text(record.get("details"))
    if status >= 400 and (details == _UPSTREAM_ANSWERED or details.startswith(_NEVER_SENT_DETAILS)):
        return NONE, 0, 0, 0
    return RESERVED, 0, 0, reserved


def _request_id(record: dict[str, Any], line: bytes) -> str:
    # authz mints it (a UUID) for every admitted request. Anything else in the field is refused here,
    # where it is read: ids become Redis fields, Kafka keys and HTTP header values downstream. The
    # line's hash keeps repeats of such a line idempotent (its reservation then expires, billed in full).
    value = _text(record.get("request_id"))
    if value and REQUEST_ID_PATTERN.fullmatch(value):
        return value
    return "line-" + hashlib.sha256(line).hexdigest()[:32]


def _chain(value: Any, jti: str) -> list[str]:
    """A child key's jtis from the root down, as authz logged them (a JSON list ending in the key's own jti)."""
    if isinstance(value, str) and value:
        try:
            value = orjson.loads(value)
        except orjson.JSONDecodeError:
            return []
    if not isinstance(value, list) or len(value) < 2 or not all(isinstance(j, str) and j for j in value) \
            or value[-1] != jti:
        return []
    return value


def parse_line(line: bytes | str, shipped_at_ms: int | None = None) -> UsageEvent | None:
    """The usage event of one access-log line, or None (not JSON, or not an admitted request)."""
    raw = line.encode() if isinstance(line, str) else line
    try:
        record = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict):
        return None
    if not _admitted(record):  # a refusal: no usage; a content refusal is told to the tenant (usage.blocked)
        return blocked_event(record, _request_id(record, raw),
                             int(time.time() * 1000) if shipped_at_ms is None else shipped_at_ms)
    if record.get("endpoint") in UNMETERED_ENDPOINTS:  # generated nothing, reserved nothing
        return None
    status = _count(record.get("code")) or 0
    reserved = _count(record.get("reserved")) or 0
    source, prompt, completion, total = _usage(record, status, reserved)
    event = UsageEvent(
        request_id=_request_id(record, raw), tenant=_text(record["tenant"]), jti=_text(record["jti"]),
        event_id=_text(record.get("event_id")) or _text(record["jti"]), status=status,
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=total, reserved=reserved,
        usage_source=source, shipped_at_ms=int(time.time() * 1000) if shipped_at_ms is None else shipped_at_ms,
    )
    # Text, counts and flags copied as the usage record defines them; the rules above did the rest.
    for name, value in copied_fields(record).items():
        setattr(event, name, value)
    _add_key_context(event, record)
    _add_money(event, record)
    if record.get("content_b64"):
        content = content_of(_text(record["content_b64"]))
        if content is not None:
            event.content = content
    return event


def _add_key_context(event: UsageEvent, record: dict[str, Any]) -> None:
    """The key's `sub`, its chain (a child key) and its `cb` claim, as authz logged them."""
    if record.get("sub") is not None:
        event.sub = _text(record["sub"])
    chain = _chain(record.get("chain"), event.jti)
    if chain:
        event.chain.extend(chain)
        event.root_jti = chain[0]
    cb = record.get("cb")
    if isinstance(cb, dict):
        event.cb_json = orjson.dumps(cb).decode()
    elif isinstance(cb, str) and cb:
        event.cb_json = cb  # authz passes the claim as a JSON string (Struct values are flat)


def _add_money(event: UsageEvent, record: dict[str, Any]) -> None:
    """Token details, the price authz applied, the cost by the usage rules, and the key's budgets.

    The cost is the price × the upstream's usage ("upstream"), what authz reserved ("reserved": the
    usage is unknown, never under-bill), or 0 ("none"); a stream cut short never less than what authz
    reserved. A line without a price is an unpriced model.
    """
    if event.usage_source == UPSTREAM:
        event.cached_tokens = min(_count(record.get("cached_tokens")) or 0, event.prompt_tokens)
        event.reasoning_tokens = min(_count(record.get("reasoning_tokens")) or 0, event.completion_tokens)
        event.cache_write_tokens = min(_count(record.get("cache_write_tokens")) or 0,
                                       event.prompt_tokens - event.cached_tokens)
    event.budget_tokens = _count(record.get("budget")) or 0
    event.budget_cost_micros = _count(record.get("budget_cost")) or 0
    price = Price.decode(_text(record.get("price")))
    if price is None:
        event.unpriced = True
        return
    event.price.CopyFrom(to_message(price))
    event.currency = price.currency
    event.reserved_cost_micros = _count(record.get("reserved_cost")) or 0
    if event.usage_source == UPSTREAM:
        cost = price.cost(TokenUsage(event.prompt_tokens, event.completion_tokens, event.cached_tokens,
                                     event.reasoning_tokens, event.cache_write_tokens))
        if cut_short(record):
            cost = max(cost, from_micros(event.reserved_cost_micros))
        elif record.get("overdue") is True:  # as the tokens: another provider may have generated before
            cost += from_micros(event.reserved_cost_micros)
    elif event.usage_source == RESERVED:
        cost = from_micros(event.reserved_cost_micros)
    else:
        cost = from_micros(0)
    event.cost = format_amount(cost)
    event.cost_micros = to_micros(cost)


def _body(content_b64: str) -> bytes | None:
    try:
        body = base64.b64decode(content_b64, validate=True)
    except (binascii.Error, ValueError):
        return None
    if body[:2] == b"\x1f\x8b":  # a gzip-encoded upstream reply: decode what is there (may be cut)
        try:
            body = zlib.decompressobj(wbits=31).decompress(body, 1 << 20)
        except zlib.error:
            return None
    return body


def _sse_text(body: bytes) -> str:
    parts = []
    for raw_line in body.splitlines():
        if not raw_line.startswith(b"data:"):
            continue
        data = raw_line[5:].strip()
        if data == b"[DONE]":
            continue
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            continue  # the last event of a truncated capture
        if isinstance(chunk, dict) and "type" in chunk:  # a Responses or Messages event
            parts.append(event_text(chunk))
            continue
        choices = chunk.get("choices") if isinstance(chunk, dict) else None
        for choice in choices if isinstance(choices, list) else []:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if isinstance(delta, dict) and choice.get("index", 0) == 0 and isinstance(delta.get("content"), str):
                parts.append(delta["content"])
    return "".join(parts)


def _json_text(body: bytes) -> str | None:
    try:
        reply = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None  # cut at the capture limit
    choices = reply.get("choices") if isinstance(reply, dict) else None
    if isinstance(reply, dict) and choices is None:
        return json_answer(reply)
    for choice in choices if isinstance(choices, list) else []:
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict) and choice.get("index", 0) == 0:
            content = message.get("content")
            return content if isinstance(content, str) else None
    return None


def content_of(content_b64: str) -> str | None:
    """The assistant text of choice 0 in a captured response body, or None when there is none."""
    body = _body(content_b64)
    if not body:
        return None
    if body.lstrip()[:1] == b"{":
        return _json_text(body)
    return _sse_text(body)
