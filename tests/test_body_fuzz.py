"""Client text in answers, logs and labels: surrogates, control characters, huge and deep bodies never give a
5xx, and every answer is valid UTF-8 JSON that Envoy's protos can carry."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import orjson
import pytest
from conftest import TenantKeys, acme_key
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from keyfactory import ed25519, native_claims, raw_token

from authz_service.envoy_adapter import to_check_response
from authz_service.metrics import FAILURES
from authz_service.servicer import AuthorizationServicer
from dynaseal.errors import ErrorCode, Refusal
from dynaseal.logs import JsonFormatter
from dynaseal.policy.authorizer import Authorizer, AuthRequest
from dynaseal.policy.decision import Decision, deny
from dynaseal.safe_text import safe_text

SURROGATE_MODEL = b'{"model":"gpt-4o-mini\\ud800","messages":[{"role":"user","content":"hi"}],"max_tokens":5}'


@pytest.fixture(scope="module")
def token(test_keys: TenantKeys) -> str:
    return acme_key(test_keys, models=["gpt-4o-mini"], max_tokens=100,
                    params={"temperature": {"max": 1.0}, "allow": ["temperature", "top_p", "tools", "stop"]})


def decide(authorizer: Authorizer, token: str, raw: bytes) -> Decision:
    request = AuthRequest("POST", "/v1/chat/completions", {"authorization": f"Bearer {token}"}, raw)
    return asyncio.run(authorizer.decide(request))


def assert_answerable(decision: Decision) -> None:
    """Not a 5xx; a refusal's body is strict UTF-8 JSON; Envoy's CheckResponse can be built and sent."""
    assert decision.status < 500, (decision.code, decision.message)
    if not decision.allowed:
        text = decision.error_body().decode("utf-8")  # strict: a surrogate cannot be in valid UTF-8
        assert orjson.loads(text)["error"]["code"] == decision.code
    to_check_response(decision).SerializeToString()


def test_safe_text_escapes_what_cannot_be_quoted_and_bounds_it() -> None:
    assert safe_text("gpt-4o-mini") == "gpt-4o-mini"
    assert safe_text("a\ud800b") == "a\\ud800b"
    assert safe_text("x\n\x1b[2J\u2028y") == "x\\x0a\\x1b[2J\\u2028y"
    assert len(safe_text("é" * 10_000)) == 201 and safe_text("é" * 10_000).endswith("…")
    assert len(safe_text("\x00" * 10_000)) <= 201
    assert safe_text(12) == "12"
    safe_text("\udfff" * 500).encode("utf-8")


def test_a_refusal_never_carries_text_no_encoder_takes() -> None:
    refusal = Refusal(ErrorCode.MODEL_NOT_ALLOWED, "model 'm\ud800\n' is not allowed", "p\udc00")
    assert refusal.message == "model 'm\\ud800\\x0a' is not allowed" and refusal.param == "p\\udc00"
    assert len(Refusal(ErrorCode.INVALID_REQUEST, "x" * 100_000).message) <= 1025


# Finding 5: a lone surrogate in `model` failed while the refusal was built (503 with a traceback).
def test_a_lone_surrogate_in_the_model_is_a_clear_400(authorizer: Authorizer, token: str) -> None:
    decision = decide(authorizer, token, SURROGATE_MODEL)
    assert (decision.status, decision.code) == (400, "invalid_request_error")
    assert "surrogate" in decision.message
    assert_answerable(decision)


@pytest.mark.parametrize("claim", ["sub", "jti", "event_id"])
def test_a_key_whose_claims_are_not_text_is_a_401(authorizer: Authorizer, test_keys: TenantKeys, claim: str) -> None:
    # Signed, so only a tenant (or an issuer passing a user's name through) makes one; it was admitted with
    # metadata no CheckResponse can carry.
    claims = {**native_claims("acme", models=["gpt-4o-mini"], max_tokens=100), claim: "u\ud800"}
    token = raw_token({"alg": "EdDSA", "kid": test_keys.acme_ed25519.kid}, json.dumps(claims),
                      ed25519(test_keys.acme_ed25519))
    decision = decide(authorizer, token, b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}]}')
    assert (decision.status, decision.code) == (401, "invalid_api_key")
    assert_answerable(decision)


def test_escaped_surrogate_pairs_are_text_and_pass(authorizer: Authorizer, token: str) -> None:
    raw = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"\\ud83d\\ude00"}],"max_tokens":5}'
    assert decide(authorizer, token, raw).allowed


def test_control_characters_in_a_refused_model_are_escaped(authorizer: Authorizer, token: str) -> None:
    raw = json.dumps({"model": "gpt\x1b[2J\n" + "y" * 5000, "messages": [{"role": "user", "content": "hi"}]})
    decision = decide(authorizer, token, raw.encode())
    assert decision.code == "model_not_allowed"
    assert "\x1b" not in decision.message and "\n" not in decision.message and len(decision.message) < 400
    assert_answerable(decision)


def test_an_answer_that_cannot_be_built_fails_closed_with_its_label() -> None:
    class Unanswerable:
        async def decide(self, request: AuthRequest) -> Decision:
            return deny(ErrorCode.INVALID_REQUEST, "bad \ud800", request_id="r-1")  # bypasses Refusal's guard

    before = FAILURES.labels("response_error")._value.get()
    servicer = AuthorizationServicer(Unanswerable())  # type: ignore[arg-type]
    from envoy.service.auth.v3.external_auth_pb2 import CheckRequest

    response = asyncio.run(servicer.Check(CheckRequest(), None))
    assert response.denied_response.status.code == 503
    assert orjson.loads(response.denied_response.body)["error"]["code"] == "authz_unavailable"
    assert FAILURES.labels("response_error")._value.get() == before + 1


def test_a_log_line_with_a_surrogate_is_still_written() -> None:
    record = logging.makeLogRecord({"msg": "deny %s", "args": ("m\ud800",), "levelno": logging.INFO,
                                    "levelname": "INFO", "reason": "r\udc00"})
    line = JsonFormatter("authz").format(record)
    assert "\n" not in line and json.loads(line)["msg"] == "deny m\ud800"
    line.encode("utf-8")


# The body fuzz: member names and values with surrogates, control characters, huge numbers, deep nesting and
# wrong types, on bodies close enough to valid that every check runs.
hostile_text = st.text(st.characters(codec=None, categories=None), max_size=12) | st.sampled_from(
    ["\ud800", "\udfff", "a\ud83d", "\x00", "\x1b[31m", "\u2028", "model", "Model", "gpt-4o-mini\ud800",
     "max_tokens\x00", "include_usage", "continuous_usage_stats", "image_url", "text"])
hostile_scalars = (st.none() | st.booleans() | st.integers(min_value=-(10**400), max_value=10**400)
                   | st.floats(allow_nan=False) | st.sampled_from([0, -1, 2**63, 1e308, 5e-324]) | hostile_text)
hostile_values = st.recursive(
    hostile_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(hostile_text, children, max_size=4),
    max_leaves=16)
member_names = st.sampled_from(["model", "messages", "max_tokens", "max_completion_tokens", "n", "stream",
                                "stream_options", "temperature", "top_p", "tools", "user", "store", "priority",
                                "service_tier", "audio"]) | hostile_text
message = st.fixed_dictionaries({"role": st.sampled_from(["user", "system"]) | hostile_text},
                                optional={"content": hostile_values | st.lists(
                                    st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"])
                                                           | hostile_text}, optional={"text": hostile_values}),
                                    max_size=3), "audio": hostile_values})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(model=st.sampled_from(["gpt-4o-mini"]) | hostile_text, messages=st.lists(message, max_size=3),
       extra=st.dictionaries(member_names, hostile_values, max_size=5), depth=st.sampled_from([0, 0, 0, 50, 5000]))
def test_no_body_gets_a_5xx_or_an_unencodable_answer(authorizer: Authorizer, token: str, model: str,
                                                      messages: list[Any], extra: dict[str, Any], depth: int) -> None:
    body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": 10, **extra}
    raw = json.dumps(body).encode()  # ensure_ascii: a lone surrogate goes out as its \\udXXX escape
    if depth:  # deep nesting, spliced in as raw text (no encoder writes it)
        raw = b'{"stop":' + b"[" * depth + b"]" * depth + b"," + raw[1:]
    assert_answerable(decide(authorizer, token, raw))


@pytest.mark.parametrize("raw", [
    b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}],"max_tokens":1e999999}',
    b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}],"temperature":-1e999999}',
    b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}],"n":' + b"9" * 5000 + b"}",
    b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}],"stream":true,'
    b'"stream_options":{"include_usage":true,"\\ud800":1}}',
    b'{"\\udc00":1,"model":"gpt-4o-mini","messages":[]}',
    b'{"model":"gpt-4o-mini","messages":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
])
def test_extreme_bodies_are_4xx(authorizer: Authorizer, token: str, raw: bytes) -> None:
    decision = decide(authorizer, token, raw)
    assert 400 <= decision.status < 500
    assert_answerable(decision)


def test_strict_json_refuses_lone_surrogates_wherever_it_parses() -> None:
    # One parser for bodies, keys and DPoP proofs: each refuses what it could never quote again.
    from dynaseal.jsonsafe import LoneSurrogateError, loads_strict

    for raw in (b'{"a":"\\ud800"}', b'{"\\udfff":1}', b'["x",["\\uDBFF"]]', '{"a":"\ud800"}'):
        with pytest.raises(ValueError):
            loads_strict(raw)
    with pytest.raises(LoneSurrogateError):
        loads_strict(b'{"a":"\\udc00\\ud800"}')  # a low half before a high one is no pair
    assert loads_strict(b'{"a":"\\ud83d\\ude00","b":"\\\\ud800"}') == {"a": "\U0001f600", "b": "\\ud800"}
