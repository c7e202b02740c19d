"""Access-log line → UsageEvent: the four rules, the fields, and content extraction (dynaseal.usage.events)."""

from __future__ import annotations

import base64
import gzip
import json
from typing import Any

import pytest

from dynaseal.pb import UsageEvent
from dynaseal.usage.events import NONE, RESERVED, UPSTREAM, content_of, parse_line

TENANT = "671249a93f1cf2f8bf9b2b82"


def line(**fields: Any) -> str:
    """An access-log line as Envoy writes it for an admitted, successful, non-streaming request."""
    record: dict[str, Any] = {
        "ts": "2026-11-23T10:32:22.903Z", "request_id": "7dddafe8-8436-4645-a186-6293f68b8c0e",
        "method": "POST", "path": "/v1/chat/completions", "code": 200, "flags": "-", "details": "via_upstream",
        "duration_ms": 12, "upstream_ms": "1", "resp_ct": "application/json", "bytes_sent": 456,
        "tenant": TENANT, "jti": "key-1", "event_id": "evt-1", "sub": "client1", "model": "deepseek-chat",
        "stream": False, "reserved": 27, "deny_code": None, "prompt_tokens": 9, "completion_tokens": 20,
        "total_tokens": 29, "content_b64": None, "content_truncated": None,
    }
    record.update(fields)
    return json.dumps(record)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def sse(*deltas: str, usage: dict[str, int] | None = None) -> bytes:
    """An OpenAI-style SSE body with these content deltas (choice 0), a usage chunk and [DONE]."""
    frames: list[dict[str, object]] = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
    frames += [{"choices": [{"index": 0, "delta": {"content": d}}], "usage": None} for d in deltas]
    frames.append({"choices": [], "usage": usage or {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}})
    return b"".join(b"data: " + json.dumps(f).encode() + b"\n\n" for f in frames) + b"data: [DONE]\n\n"


# Rule 2: the upstream reported usage.

def test_upstream_usage_is_copied_with_every_field() -> None:
    event = parse_line(line(), shipped_at_ms=1234)
    assert event is not None
    assert event.usage_source == UPSTREAM
    assert (event.prompt_tokens, event.completion_tokens, event.total_tokens) == (9, 20, 29)
    assert event.request_id == "7dddafe8-8436-4645-a186-6293f68b8c0e"
    assert (event.tenant, event.jti, event.event_id, event.sub) == (TENANT, "key-1", "evt-1", "client1")
    assert (event.model, event.stream, event.status, event.reserved) == ("deepseek-chat", False, 200, 27)
    assert (event.started_at, event.duration_ms, event.path) == ("2026-11-23T10:32:22.903Z", 12, "/v1/chat/completions")
    assert (event.response_flags, event.response_details, event.shipped_at_ms) == ("-", "via_upstream", 1234)
    assert not event.HasField("content")


def test_a_cut_stream_bills_usage_seen_above_the_reservation() -> None:
    event = parse_line(line(flags="DC", details="downstream_remote_disconnect", stream=True))
    assert event is not None and event.usage_source == UPSTREAM and event.total_tokens == 29  # 29 > reserved 27


# Rule 2: a stream cut short bills the larger of the reservation and any usage seen. With vLLM's
# continuous_usage_stats every chunk carries the running usage: the last one Envoy read is interim.

@pytest.mark.parametrize(("flags", "details"), [
    ("DC", "downstream_remote_disconnect"),
    ("UR", "upstream_reset_after_response_started{remote_reset}"),
    ("UC", "upstream_reset_after_response_started{connection_termination}"),
    ("LR", "upstream_reset_after_response_started{local_reset}"),
    ("SI", "stream_idle_timeout"),
    ("UR,DC", "downstream_remote_disconnect"),
    ("DR", "downstream_remote_reset"),
])
def test_interim_usage_of_a_cut_stream_never_counts_below_the_reservation(flags: str, details: str) -> None:
    event = parse_line(line(flags=flags, details=details, stream=True, reserved=400,
                            prompt_tokens=49, completion_tokens=3, total_tokens=52))
    assert event is not None
    assert (event.usage_source, event.total_tokens, event.prompt_tokens, event.completion_tokens) == \
        (RESERVED, 400, 0, 0)
    assert event.response_flags == flags


def test_a_whole_stream_and_a_whole_json_answer_bill_their_usage() -> None:
    # No cut flag: the last usage Envoy read is the usage-only event (or the last before [DONE]).
    whole = parse_line(line(stream=True, reserved=400))
    # A JSON answer is read whole by json_to_metadata before any of it reaches the client: its usage is final.
    json_answer = parse_line(line(flags="DC", details="downstream_remote_disconnect", stream=False, reserved=400))
    for event in (whole, json_answer):
        assert event is not None and (event.usage_source, event.total_tokens) == (UPSTREAM, 29)


def test_a_cut_stream_is_priced_at_least_at_its_reserved_cost() -> None:
    price = "USD 2.00 1.00 8.00 8.00"  # per million tokens: 29 tokens cost far less than the reservation
    cut = parse_line(line(flags="DC", details="downstream_remote_disconnect", stream=True, reserved=20,
                          price=price, reserved_cost=999_999))
    assert cut is not None and cut.usage_source == UPSTREAM and cut.total_tokens == 29
    assert cut.cost_micros == 999_999


def test_float_counts_and_missing_total_are_normalised() -> None:
    event = parse_line(line(prompt_tokens=9.0, completion_tokens=20.0, total_tokens=None))
    assert event is not None and event.total_tokens == 29 and event.usage_source == UPSTREAM


# Rule 4: usage unknown → bill the reservation.

def test_disconnect_before_the_usage_chunk_bills_the_reservation() -> None:
    event = parse_line(line(flags="DC", details="downstream_remote_disconnect", stream=True,
                            prompt_tokens=None, completion_tokens=None, total_tokens=None))
    assert event is not None
    assert event.usage_source == RESERVED
    assert (event.total_tokens, event.prompt_tokens, event.completion_tokens) == (27, 0, 0)
    assert event.response_flags == "DC"


def test_client_gone_before_any_status_bills_the_reservation() -> None:
    event = parse_line(line(code=0, flags="DC", total_tokens=None, prompt_tokens=None, completion_tokens=None))
    assert event is not None and event.usage_source == RESERVED and event.status == 0 and event.total_tokens == 27


def test_response_too_large_for_envoy_bills_the_reservation() -> None:
    event = parse_line(line(code=500, details="response_payload_too_large", total_tokens=None,
                            prompt_tokens=None, completion_tokens=None))
    assert event is not None and event.usage_source == RESERVED and event.total_tokens == 27


# Rule 3: the upstream answered an error → nothing billed, still an event.

@pytest.mark.parametrize(("code", "details"), [(500, "via_upstream"), (429, "via_upstream"),
                                               (503, "upstream_reset_before_response_started{connection_failure}")])
def test_upstream_error_releases_the_reservation(code: int, details: str) -> None:
    event = parse_line(line(code=code, details=details, prompt_tokens=None, completion_tokens=None, total_tokens=None))
    assert event is not None
    assert (event.usage_source, event.total_tokens, event.status, event.reserved) == (NONE, 0, code, 27)


# Rule 1: not admitted → no event.

@pytest.mark.parametrize("fields", [
    {"deny_code": "model_not_allowed", "code": 403, "details": "ext_authz_denied", "tenant": None},
    {"deny_code": "rate_limit_exceeded", "code": 429, "details": "ext_authz_denied"},  # jti known, still denied
    {"jti": None, "tenant": None, "code": 401, "details": "ext_authz_denied", "deny_code": "invalid_api_key"},
    {"jti": None, "tenant": None, "code": 503, "details": "ext_authz_error", "flags": "UAEX"},
    {"tenant": TENANT, "jti": "key-1", "code": 503, "details": "ext_authz_error"},
    {"path": "/nope", "code": 404, "details": "route_not_found", "tenant": None, "jti": None},
])
def test_requests_that_were_not_admitted_make_no_event(fields: dict[str, Any]) -> None:
    assert parse_line(line(**fields)) is None


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1, 2]", b"{\"tenant\": ", "\u00e9\u00e9".encode("latin-1")])
def test_garbage_lines_make_no_event(raw: bytes) -> None:
    assert parse_line(raw) is None


def test_line_without_request_id_gets_a_stable_one() -> None:
    raw = line(request_id=None)
    first, second = parse_line(raw), parse_line(raw)
    assert first is not None and second is not None
    assert first.request_id.startswith("line-") and first.request_id == second.request_id


def test_event_id_defaults_to_jti_and_sub_is_optional() -> None:
    event = parse_line(line(event_id=None, sub=None))
    assert event is not None and event.event_id == "key-1" and not event.HasField("sub")


def test_cb_claim_is_carried_as_json() -> None:
    event = parse_line(line(cb='{"order": 7}'))
    assert event is not None and json.loads(event.cb_json) == {"order": 7}
    event = parse_line(line(cb={"order": 8}))
    assert event is not None and json.loads(event.cb_json) == {"order": 8}


def test_event_round_trips_through_protobuf() -> None:
    event = parse_line(line(content_b64=b64(sse("Hello", " world"))))
    assert event is not None
    again = UsageEvent.FromString(event.SerializeToString())
    assert again == event and again.content == "Hello world"


# Content: what the Lua filter captured for tenants with include_content.

def test_streamed_content_is_the_joined_deltas_of_choice_zero() -> None:
    body = sse("Hello", ", ", "edge") + b"data: " + json.dumps(
        {"choices": [{"index": 1, "delta": {"content": "other choice"}}]}).encode() + b"\n\n"
    assert content_of(b64(body)) == "Hello, edge"


def test_json_content_is_the_message_of_choice_zero() -> None:
    body = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi there"}}],
                       "usage": {"total_tokens": 3}}).encode()
    assert content_of(b64(body)) == "Hi there"


def test_truncated_capture_keeps_what_complete_events_say() -> None:
    body = sse("one ", "two ", "three")
    cut = body[: body.index(b"three") + 2]
    assert content_of(b64(cut)) == "one two "
    event = parse_line(line(content_b64=b64(cut), content_truncated=True))
    assert event is not None and event.content == "one two " and event.content_truncated


def test_truncated_json_capture_has_no_content() -> None:
    body = json.dumps({"choices": [{"index": 0, "message": {"content": "x" * 100}}]}).encode()
    assert content_of(b64(body[:50])) is None


def test_gzip_encoded_body_is_decoded() -> None:
    assert content_of(b64(gzip.compress(sse("zipped")))) == "zipped"


@pytest.mark.parametrize("value", ["", "!!!not base64!!!", b64(b"{\"error\": {\"message\": \"boom\"}}"),
                                   b64(b"data: {\"choices\": \"nope\"}\n\n"), b64(b"[]")])
def test_odd_captures_give_no_content_and_no_crash(value: str) -> None:
    assert not content_of(value)


def test_error_body_capture_leaves_content_unset() -> None:
    event = parse_line(line(code=500, total_tokens=None, prompt_tokens=None, completion_tokens=None,
                            content_b64=b64(b'{"error": {"message": "boom"}}')))
    assert event is not None and not event.HasField("content") and event.usage_source == NONE


@pytest.mark.parametrize("bad", ["é" * 5, "x" * 300, "a b", "a\r\nb", "../x", ""])
def test_request_ids_that_are_not_bounded_ascii_are_replaced(bad: str) -> None:
    event = parse_line(line(request_id=bad))
    assert event is not None and event.request_id.startswith("line-") and event.request_id.isascii()
