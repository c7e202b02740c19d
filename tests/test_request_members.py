"""Request members by allowlist (per endpoint, plus the tenant's provider_features) and stream_options."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import Any

import pytest
from conftest import acme_tenant
from pydantic import ValidationError

from dynaseal.config import DynasealConfig
from dynaseal.errors import ErrorCode, Refusal
from dynaseal.keys.claims import VerifiedKey
from dynaseal.keys.tenants import Tenant
from dynaseal.policy.request_members import CHAT_COMPLETIONS, KNOWN_MEMBERS, RESTRICTED_FEATURES
from dynaseal.policy.request_policy import CheckedRequest, check_request
from dynaseal.tenant_config import Limits

# A value each OpenAI member may carry without tripping another check.
OPENAI_VALUES: dict[str, Any] = {
    "temperature": 0.5, "top_p": 0.9, "frequency_penalty": 0.1, "presence_penalty": 0.1, "logit_bias": {"50256": -100},
    "logprobs": True, "top_logprobs": 2, "stop": ["\n"], "seed": 7, "tools": [], "tool_choice": "none",
    "parallel_tool_calls": False, "response_format": {"type": "text"}, "user": "u1", "safety_identifier": "u1",
    "prompt_cache_key": "c", "reasoning_effort": "low", "verbosity": "low", "functions": [], "function_call": "none",
}


@pytest.fixture(scope="module")
def base(cfg: DynasealConfig) -> Tenant:
    return acme_tenant(cfg)


def key(base: Tenant, **limits: Any) -> VerifiedKey:
    t = replace(base, limits=Limits(models=("*",), **limits))
    return VerifiedKey(tenant=t, jti=f"k-{uuid.uuid4().hex}", exp=time.time() + 600, event_id="e", sub=None,
                       models=None, max_tokens=100, budget=None, uses=None, rpm=None)


def check(k: VerifiedKey, **fields: Any) -> CheckedRequest:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10, **fields}
    return check_request(body, k, 100)


def refusal(k: VerifiedKey, **fields: Any) -> Refusal:
    with pytest.raises(Refusal) as refused:
        check(k, **fields)
    return refused.value


@pytest.mark.parametrize("member,value", [
    ("priority", 10),                                   # vLLM's scheduler priority
    ("kv_transfer_params", {"do_remote_decode": True}),  # vLLM's disaggregated prefill
    ("best_of", 5),                                     # vLLM: five sequences generated, one returned
    ("top_k", 40), ("guided_json", {}), ("echo", True), ("some_new_member", None),
])
def test_a_member_the_gateway_does_not_know_is_refused_with_its_name(base: Tenant, member: str, value: Any) -> None:
    refused = refusal(key(base), **{member: value})
    assert refused.code is ErrorCode.PARAM_NOT_ALLOWED and refused.param == member
    assert f"'{member}'" in refused.message


def test_every_openai_chat_member_passes_the_allowlist(base: Tenant) -> None:
    assert set(OPENAI_VALUES) | RESTRICTED_FEATURES | {"model", "messages", "max_tokens", "max_completion_tokens",
                                                       "n", "stream", "stream_options"} == CHAT_COMPLETIONS
    assert check(key(base), **OPENAI_VALUES).model == "gpt-4o-mini"
    assert KNOWN_MEMBERS["chat_completions"] is CHAT_COMPLETIONS


def test_a_tenant_adds_members_in_provider_features(base: Tenant) -> None:
    k = key(base, provider_features=("priority", "top_k", "service_tier"))
    assert check(k, priority=1, top_k=20, service_tier="flex").model == "gpt-4o-mini"
    assert refusal(k, best_of=2).param == "best_of"  # only what it lists


def test_restricted_features_still_need_the_tenant(base: Tenant) -> None:
    assert refusal(key(base), store=True).param == "store"
    assert check(key(base), store=False).model == "gpt-4o-mini"  # turned off is harmless


@pytest.mark.parametrize("names", [("Priority",), ("top-k",), ("x" * 65,), ("",)])
def test_provider_features_are_member_names(names: tuple[str, ...]) -> None:
    with pytest.raises(ValidationError):
        Limits(provider_features=names)


# Finding 3, request side: the client may not choose how its stream is metered.
@pytest.mark.parametrize("options", [
    {"include_usage": True, "continuous_usage_stats": True},
    {"include_usage": True, "include_obfuscation": False},
    {"continuous_usage_stats": False},
])
@pytest.mark.parametrize("stream", [True, False])
def test_stream_options_accept_include_usage_only(base: Tenant, options: dict[str, Any], stream: bool) -> None:
    refused = refusal(key(base), stream=stream, stream_options=options)
    assert refused.code is ErrorCode.INVALID_REQUEST and refused.param == "stream_options"
    other = next(name for name in options if name != "include_usage")
    assert f"stream_options.{other}" in refused.message


@pytest.mark.parametrize("options", ["yes", 1, [], {"include_usage": "true"}, {"include_usage": 1}])
def test_stream_options_must_be_an_object_of_booleans(base: Tenant, options: Any) -> None:
    assert refusal(key(base), stream=True, stream_options=options).code is ErrorCode.INVALID_REQUEST


def test_include_usage_true_is_accepted_and_nothing_added(base: Tenant) -> None:
    checked = check(key(base), stream=True, stream_options={"include_usage": True})
    assert checked.stream and "stream_options" not in checked.body_prefix and not checked.strip_usage
