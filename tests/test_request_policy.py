"""Request-body policy: model, caps, streaming, params, and hostile bodies never crash the check."""

from __future__ import annotations

import asyncio
import json

import orjson
import pytest
from conftest import OTHER_TENANT, TenantKeys
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from keyfactory import ed25519, native_claims, raw_token

from dynaseal.config import DynasealConfig
from dynaseal.keys.tenants import build_registry
from dynaseal.policy.authorizer import Authorizer, AuthRequest
from dynaseal.policy.decision import Decision


@pytest.fixture(scope="module")
def authorizer(cfg: DynasealConfig) -> Authorizer:
    """An authorizer over the test config, no Redis."""
    from dynaseal.keys.signing_keystore import SigningKeyStore

    SigningKeyStore(cfg.data_path / "issuer").ensure()
    return Authorizer(build_registry(cfg), quota=None)


@pytest.fixture(scope="module")
def key(test_keys: TenantKeys) -> str:
    """A key with a param policy: temperature ≤ 1.0, only `top_p` allowed beyond the core fields."""
    return raw_token({"alg": "EdDSA", "kid": test_keys.acme_ed25519.kid},
                     native_claims(OTHER_TENANT, models=["gpt-4o-mini"], max_tokens=100,
                                   params={"temperature": {"max": 1.0}, "top_p": {"min": 0.1}, "allow": ["top_p"]}),
                     ed25519(test_keys.acme_ed25519))


def decide(authorizer: Authorizer, key: str, body: bytes, **headers: str) -> Decision:
    hdrs = {"authorization": f"Bearer {key}", **{k.replace("_", "-"): v for k, v in headers.items()}}
    return asyncio.run(authorizer.decide(AuthRequest("POST", "/v1/chat/completions", hdrs, body)))


def body(**fields: object) -> bytes:
    base: dict[str, object] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}],
                               "max_tokens": 10}
    base.update(fields)
    return orjson.dumps({k: v for k, v in base.items() if v is not None})


CASES = {
    "ok": (body(), 200, "ok"),
    "not_json": (b"{nope", 400, "invalid_request_error"),
    "array": (b"[1,2]", 400, "invalid_request_error"),
    "empty": (b"", 400, "invalid_request_error"),
    "nan": (b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}],"max_tokens":1,"temperature":NaN}',
            400, "invalid_request_error"),
    "invalid_utf8": (b'{"model":"\xff\xfe","messages":[]}', 400, "invalid_request_error"),
    "duplicate_model": (b'{"model":"gpt-4o","model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}],'
                        b'"max_tokens":1}', 400, "duplicate_key"),
    "nested_duplicate": (b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}],"max_tokens":1,'
                         b'"stream":true,"stream_options":{"include_usage":false,"include_usage":true}}',
                         400, "duplicate_key"),
    "model_missing": (body(model=None), 400, "invalid_request_error"),
    "model_not_allowed": (body(model="gpt-4o"), 403, "model_not_allowed"),
    "model_outside_tenant": (body(model="deepseek-chat"), 403, "model_not_allowed"),
    "no_max_tokens": (body(max_tokens=None), 200, "ok"),  # the gateway adds the key's cap
    "max_tokens_null": (body(max_tokens=None) [:-1] + b',"max_tokens":null}', 400, "invalid_request_error"),
    "max_tokens_over": (body(max_tokens=101), 403, "param_not_allowed"),
    "max_completion_tokens_over": (body(max_tokens=None, max_completion_tokens=101), 403, "param_not_allowed"),
    "n_times_max_over": (body(max_tokens=60, n=2), 403, "param_not_allowed"),
    "max_tokens_bool": (body(max_tokens=True), 400, "invalid_request_error"),
    "max_tokens_negative": (body(max_tokens=-5), 400, "invalid_request_error"),
    "stream_without_usage": (body(stream=True), 200, "ok"),  # the gateway asks for usage itself
    "stream_usage_false": (body(stream=True, stream_options={"include_usage": False}), 400, "stream_usage_required"),
    "stream_ok": (body(stream=True, stream_options={"include_usage": True}), 200, "ok"),
    "temperature_over": (body(temperature=1.2), 403, "param_not_allowed"),
    "temperature_string": (body(temperature="0.5"), 403, "param_not_allowed"),
    "top_p_under": (body(top_p=0.05), 403, "param_not_allowed"),
    "field_not_allowed": (body(logit_bias={"1": 100}), 403, "param_not_allowed"),
    "allowed_field": (body(top_p=0.5, temperature=0.2), 200, "ok"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_body_policy(authorizer: Authorizer, key: str, name: str) -> None:
    raw, status, code = CASES[name]
    decision = decide(authorizer, key, raw)
    assert (decision.status, decision.code) == (status, code), decision.message
    if status != 200:
        error = json.loads(decision.error_body())["error"]
        assert error["code"] == code and error["message"]


def test_compressed_body_is_refused(authorizer: Authorizer, key: str) -> None:
    decision = decide(authorizer, key, b"\x1f\x8b\x08\x00garbage", content_encoding="gzip")
    assert (decision.status, decision.code) == (400, "unsupported_content_encoding")


def test_non_json_content_type_is_refused(authorizer: Authorizer, key: str) -> None:
    decision = decide(authorizer, key, body(), content_type="text/plain")
    assert decision.status == 400


def test_reservation_covers_prompt_and_every_choice(authorizer: Authorizer, key: str) -> None:
    decision = decide(authorizer, key, body(max_tokens=30, n=3))
    assert decision.allowed
    assert int(decision.metadata["reserved"]) >= 90 + 4


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(max_size=2048))
def test_any_bytes_never_crash_or_5xx(authorizer: Authorizer, key: str, payload: bytes) -> None:
    decision = decide(authorizer, key, payload)
    assert decision.status < 500


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fields=st.dictionaries(st.sampled_from(["model", "messages", "max_tokens", "max_completion_tokens", "n",
                                               "stream", "stream_options", "temperature", "top_p", "tools"]),
                              json_values, max_size=8))
def test_any_json_object_never_crash_or_5xx(authorizer: Authorizer, key: str, fields: dict[str, object]) -> None:
    decision = decide(authorizer, key, json.dumps(fields).encode())
    assert decision.status < 500
    if decision.allowed:  # anything admitted really is within the key's policy
        assert fields["model"] == "gpt-4o-mini"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(headers=st.dictionaries(st.sampled_from(["authorization", "dynasealtoken", "content-type",
                                                "content-encoding"]), st.text(max_size=300), max_size=4))
def test_any_headers_never_crash_or_5xx(authorizer: Authorizer, headers: dict[str, str]) -> None:
    decision = asyncio.run(authorizer.decide(AuthRequest("POST", "/v1/chat/completions", headers, body())))
    assert decision.status < 500
    assert not decision.allowed
