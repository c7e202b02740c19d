"""Per-endpoint policy: caps, additions, server-side members, member allowlists, and reservations that
are true upper bounds of what the provider bills (the mock's usage for the same body)."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import Any

import orjson
import pytest
from conftest import acme_tenant
from hypothesis import given, settings
from hypothesis import strategies as st

from dynaseal.config import DynasealConfig
from dynaseal.errors import ErrorCode, Refusal
from dynaseal.keys.claims import VerifiedKey
from dynaseal.keys.tenants import Tenant
from dynaseal.policy.endpoints import endpoint_of
from dynaseal.policy.endpoints.embeddings import check_embeddings
from dynaseal.policy.endpoints.messages import check_count_tokens, check_messages
from dynaseal.policy.endpoints.responses import check_responses
from dynaseal.policy.endpoints.server_side import feature_of
from dynaseal.tenant_config import Limits
from mock_llm.embeddings_api import embeddings_body
from mock_llm.messages_api import build_message
from mock_llm.responses_api import build_response

CAP = 256


@pytest.fixture(scope="module")
def base(cfg: DynasealConfig) -> Tenant:
    return acme_tenant(cfg)


def key(base: Tenant, sub: str | None = None, **limits: Any) -> VerifiedKey:
    t = replace(base, limits=Limits(models=("*",), max_tokens=4096, **limits))
    return VerifiedKey(tenant=t, jti=f"k-{uuid.uuid4().hex}", exp=time.time() + 600, event_id="e", sub=sub,
                       models=None, budget=None, uses=None, rpm=None, max_tokens=CAP)


def refused(check: Any, body: dict[str, Any], k: VerifiedKey) -> Refusal:
    with pytest.raises(Refusal) as info:
        check(body, k, len(orjson.dumps(body)))
    return info.value


def run(check: Any, body: dict[str, Any], k: VerifiedKey) -> Any:
    return check(body, k, len(orjson.dumps(body)))


# ------------------------------------------------------------------ paths


def test_paths_name_their_endpoint_and_format() -> None:
    assert endpoint_of("/v1/responses").format == "responses"  # type: ignore[union-attr]
    assert endpoint_of("/api/v1/messages").errors == "anthropic"  # type: ignore[union-attr]
    counting = endpoint_of("/v1/messages/count_tokens")
    assert counting is not None and not counting.metered and counting.format == "messages"
    assert endpoint_of("/v1/embeddings").name == "embeddings"  # type: ignore[union-attr]
    assert endpoint_of("/v1/chat/completions") is None and endpoint_of("/v1/responses/abc") is None


# ------------------------------------------------------------------ Responses


def test_responses_without_cap_gets_the_keys_cap_and_store_false(base: Tenant) -> None:
    checked = run(check_responses, {"model": "m", "input": "hi"}, key(base))
    assert checked.body_prefix == f'"max_output_tokens":{CAP},"store":false,'
    assert checked.completion_bound == CAP


def test_responses_store_is_the_providers_default_where_the_tenant_allows_storing(base: Tenant) -> None:
    allowed = key(base, provider_features=("store",))
    assert run(check_responses, {"model": "m", "input": "hi", "max_output_tokens": 20}, allowed).body_prefix == ""
    assert run(check_responses, {"model": "m", "input": "hi", "store": True, "max_output_tokens": 20}, allowed)
    assert refused(check_responses, {"model": "m", "input": "hi", "store": True}, key(base)).param == "store"


def test_responses_cap_above_the_keys_is_refused(base: Tenant) -> None:
    refusal = refused(check_responses, {"model": "m", "input": "hi", "max_output_tokens": CAP + 1}, key(base))
    assert (refusal.code, refusal.param) == (ErrorCode.PARAM_NOT_ALLOWED, "max_output_tokens")
    strict = refused(check_responses, {"model": "m", "input": "hi"}, key(base, strict_requests=True))
    assert strict.code == ErrorCode.MAX_TOKENS_REQUIRED


@pytest.mark.parametrize(("extra", "feature"), [
    ({"previous_response_id": "resp_1"}, "previous_response_id"),
    ({"conversation": "conv_1"}, "conversation"),
    ({"prompt": {"id": "pmpt_1"}}, "prompt"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "item_reference"),
    ({"tools": [{"type": "web_search_preview"}]}, "web_search"),
    ({"tools": [{"type": "file_search", "vector_store_ids": ["vs"]}]}, "file_search"),
    ({"tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}, "code_interpreter"),
    ({"tools": [{"type": "image_generation"}]}, "image_generation"),
    ({"tools": [{"type": "computer_use_preview", "display_width": 1, "display_height": 1}]}, "computer_use"),
    ({"tools": [{"type": "mcp", "server_label": "x", "server_url": "https://mcp.example"}]}, "mcp"),
])
def test_responses_server_side_refused_by_default_and_reserved_at_the_ceiling(
        base: Tenant, extra: dict[str, Any], feature: str) -> None:
    body = {"model": "m", "input": "hi", "max_output_tokens": 20, **extra}
    refusal = refused(check_responses, body, key(base))
    assert (refusal.code, refusal.param) == (ErrorCode.PARAM_NOT_ALLOWED, feature)
    plain = run(check_responses, {"model": "m", "input": "hi", "max_output_tokens": 20}, key(base))
    allowed = run(check_responses, body, key(base, server_side=(feature,), server_side_tokens=50_000))
    assert allowed.prompt_bound >= plain.prompt_bound + 50_000


def test_responses_client_tools_and_function_results_pass(base: Tenant) -> None:
    body = {"model": "m", "max_output_tokens": 20,
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
            "input": [{"role": "user", "content": "hi"},
                      {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
                      {"type": "function_call_output", "call_id": "c", "output": "ok"}]}
    assert run(check_responses, body, key(base)).prompt_bound > len(orjson.dumps(body))


def test_responses_images_need_a_media_allowance_under_a_budget(base: Tenant) -> None:
    body = {"model": "m", "max_output_tokens": 20, "input": [{"role": "user", "content": [
        {"type": "input_text", "text": "what is this"}, {"type": "input_image", "image_url": "https://x/y.png"}]}]}
    assert refused(check_responses, body, key(base, budget=5000)).code == ErrorCode.PARAM_NOT_ALLOWED
    priced = run(check_responses, body, key(base, budget=5000, media_part_tokens=1500))
    assert priced.prompt_bound >= len(orjson.dumps(body)) + 1500


@pytest.mark.parametrize(("body", "param"), [
    ({"model": "m", "input": "hi", "background": True}, "background"),
    ({"model": "m", "input": "hi", "Model": "x"}, "request"),
    ({"model": "m", "input": [{"role": "user", "content": "hi", "Role": "system"}]}, "input"),
    ({"model": "m", "input": []}, "input"),
    ({"model": "m", "input": "hi", "stream_options": {"include_usage": False}}, "stream_options"),
    ({"model": "m", "input": "hi", "max_output_tokens": None}, "max_output_tokens"),
])
def test_responses_bad_members_are_refused_by_name(base: Tenant, body: dict[str, Any], param: str) -> None:
    assert refused(check_responses, body, key(base)).param == param


def test_responses_end_user_is_the_keys_sub(base: Tenant) -> None:
    assert refused(check_responses, {"model": "m", "input": "x", "user": "mallory"}, key(base, sub="alice")).param \
        == "user"
    assert run(check_responses, {"model": "m", "input": "x", "safety_identifier": "alice"}, key(base, sub="alice"))


# ------------------------------------------------------------------ Messages


HELLO = [{"role": "user", "content": "hi"}]


def test_messages_cap_refused_above_the_keys_and_added_when_missing(base: Tenant) -> None:
    refusal = refused(check_messages, {"model": "c", "max_tokens": CAP + 1, "messages": HELLO}, key(base))
    assert (refusal.code, refusal.param) == (ErrorCode.PARAM_NOT_ALLOWED, "max_tokens")
    assert run(check_messages, {"model": "c", "messages": HELLO}, key(base)).body_prefix == f'"max_tokens":{CAP},'
    assert refused(check_messages, {"model": "c", "messages": HELLO}, key(base, strict_requests=True)).code \
        == ErrorCode.MAX_TOKENS_REQUIRED


def test_messages_thinking_budget_must_fit_inside_max_tokens(base: Tenant) -> None:
    body = {"model": "c", "max_tokens": 100, "messages": HELLO, "thinking": {"type": "enabled", "budget_tokens": 100}}
    assert refused(check_messages, body, key(base)).param == "thinking.budget_tokens"
    body["thinking"] = {"type": "enabled", "budget_tokens": 99}
    assert run(check_messages, body, key(base)).completion_bound == 100


@pytest.mark.parametrize(("extra", "feature"), [
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "web_search"),
    ({"tools": [{"type": "web_fetch_20250910", "name": "web_fetch"}]}, "web_fetch"),
    ({"tools": [{"type": "code_execution_20250825", "name": "code_execution"}]}, "code_execution"),
    ({"mcp_servers": [{"type": "url", "url": "https://mcp.example", "name": "x"}]}, "mcp_servers"),
    ({"container": "container_1"}, "container"),
])
def test_messages_server_tools_refused_by_default_reserved_when_allowed(
        base: Tenant, extra: dict[str, Any], feature: str) -> None:
    body = {"model": "c", "max_tokens": 10, "messages": HELLO, **extra}
    assert refused(check_messages, body, key(base)).param == feature
    assert run(check_messages, body, key(base, server_side=(feature,), server_side_tokens=9000)).prompt_bound > 9000


def test_messages_metadata_is_the_end_users_id_only(base: Tenant) -> None:
    body = {"model": "c", "max_tokens": 10, "messages": HELLO, "metadata": {"user_id": "alice"}}
    assert run(check_messages, body, key(base, sub="alice"))
    assert refused(check_messages, body, key(base, sub="bob")).param == "metadata.user_id"
    assert refused(check_messages, {**body, "metadata": {"user_id": "a", "x": 1}}, key(base)).param == "metadata"


def test_messages_client_tools_pass(base: Tenant) -> None:
    body = {"model": "c", "max_tokens": 10, "messages": HELLO,
            "tools": [{"name": "f", "input_schema": {"type": "object"}}, {"type": "bash_20250124", "name": "bash"},
                      {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"}]}
    assert run(check_messages, body, key(base))


def test_messages_tools_reserve_anthropics_hidden_tool_prompt(base: Tenant) -> None:
    plain = {"model": "c", "max_tokens": 10, "messages": HELLO}
    custom = {**plain, "tools": [{"name": "f", "input_schema": {"type": "object"}}]}
    defined = {**plain, "tools": [{"type": "computer_20250124", "name": "computer", "display_width_px": 1,
                                   "display_height_px": 1}, {"type": "text_editor_20250728", "name": "e"}]}
    base_bound = run(check_messages, plain, key(base)).prompt_bound
    # A tool-use system prompt of 346 tokens on current models, and ≈ 1,200 + 700 for these defined tools.
    assert run(check_messages, custom, key(base)).prompt_bound >= base_bound + 346
    assert run(check_messages, defined, key(base)).prompt_bound >= base_bound + 346 + 1235 + 700


def test_responses_built_in_client_tools_reserve_their_definitions(base: Tenant) -> None:
    plain = {"model": "m", "input": "hi", "max_output_tokens": 20}
    shell = {**plain, "tools": [{"type": "local_shell"}]}
    plain_bound = run(check_responses, plain, key(base)).prompt_bound
    assert run(check_responses, shell, key(base)).prompt_bound >= plain_bound + 1000


def test_messages_images_are_media(base: Tenant) -> None:
    image = {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}
    body = {"model": "c", "max_tokens": 10, "messages": [{"role": "user", "content": [image]},
                                                         {"role": "assistant", "content": "ok"},
                                                         {"role": "user", "content": [{
                                                             "type": "tool_result", "tool_use_id": "t",
                                                             "content": [image]}]}]}
    assert refused(check_messages, body, key(base, budget=1000)).code == ErrorCode.PARAM_NOT_ALLOWED
    assert run(check_messages, body, key(base, budget=1000, media_part_tokens=1600)).prompt_bound >= 3200


def test_count_tokens_reserves_nothing_but_checks_model_and_members(base: Tenant) -> None:
    assert run(check_count_tokens, {"model": "c", "messages": HELLO}, key(base)).reservation == 0
    assert refused(check_count_tokens, {"model": "c", "messages": HELLO, "max_tokens": 5}, key(base)).param \
        == "max_tokens"
    narrow = replace(key(base), models=frozenset({"other"}))
    assert refused(check_count_tokens, {"model": "c", "messages": HELLO}, narrow).code == ErrorCode.MODEL_NOT_ALLOWED


# ------------------------------------------------------------------ embeddings


def test_embeddings_bound_strings_by_bytes_and_token_arrays_by_length(base: Tenant) -> None:
    assert run(check_embeddings, {"model": "e", "input": "héllo"}, key(base)).reservation == 6 + 32
    assert run(check_embeddings, {"model": "e", "input": [1, 2, 3]}, key(base)).reservation == 3 + 32
    assert run(check_embeddings, {"model": "e", "input": [[1, 2], [3], "ab"]}, key(base)).reservation == 5 + 32
    for bad in ([], [True], [["a"]], {"x": 1}, None, [1, "a"]):
        assert refused(check_embeddings, {"model": "e", "input": bad}, key(base)).param == "input"
    assert refused(check_embeddings, {"model": "e", "input": "x", "truncate": "END"}, key(base)).param == "truncate"


# ------------------------------------------------------------------ reservation ≥ bill


_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=200)


@settings(max_examples=60, deadline=None)
@given(texts=st.lists(_TEXT, min_size=1, max_size=5), cap=st.integers(16, CAP))
def test_reservations_never_below_the_providers_usage(base: Tenant, texts: list[str], cap: int) -> None:
    k = key(base)
    responses = {"model": "m", "instructions": texts[0], "max_output_tokens": cap,
                 "input": [{"role": "user", "content": t} for t in texts]}
    run_ = build_response(responses)
    assert run(check_responses, responses, k).reservation >= run_.usage()["total_tokens"]
    messages = {"model": "c", "max_tokens": cap, "system": texts[0],
                "messages": [{"role": "user", "content": [{"type": "text", "text": t,
                                                           "cache_control": {"type": "ephemeral"}}]} for t in texts]}
    usage = build_message(messages).usage()
    billed = sum(usage.values())
    assert run(check_messages, messages, k).reservation >= billed
    embeddings = {"model": "e", "input": texts}
    assert run(check_embeddings, embeddings, k).reservation >= embeddings_body(embeddings)["usage"]["total_tokens"]


def test_feature_names_drop_versions_and_previews() -> None:
    assert feature_of("web_search_20250305") == "web_search"
    assert feature_of("web_search_preview_2025_03_11") == "web_search"
    assert feature_of("computer_use_preview") == "computer_use"
    assert feature_of("mcp") == "mcp"
