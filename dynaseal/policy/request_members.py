"""The request members the gateway knows, per endpoint: an allowlist, never a denylist.

A member the gateway does not know may change what a request costs or where its data goes
(vLLM's `best_of` generates several sequences, `priority` and `kv_transfer_params` reach into the
scheduler; a provider's next release adds more). Such a member is refused with its name, unless
the tenant lists it in `limits.provider_features`. A new endpoint (Responses, Messages,
embeddings) adds its own set here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dynaseal.errors import ErrorCode, Refusal

# Provider features that change the price or keep data in the provider account (a price
# multiplier, per-call fees, audio output, stored completions): known, but refused unless the
# tenant's `limits.provider_features` lists them, whatever a key says.
RESTRICTED_FEATURES = frozenset({"service_tier", "web_search_options", "modalities", "audio", "store", "metadata",
                                 "prediction"})

# OpenAI's chat-completions request members (the restricted ones included).
CHAT_COMPLETIONS = frozenset({
    "model", "messages", "max_tokens", "max_completion_tokens", "n", "stream", "stream_options",
    "temperature", "top_p", "frequency_penalty", "presence_penalty", "logit_bias", "logprobs", "top_logprobs",
    "stop", "seed", "tools", "tool_choice", "parallel_tool_calls", "response_format", "user",
    "safety_identifier", "prompt_cache_key", "reasoning_effort", "verbosity", "functions", "function_call",
}) | RESTRICTED_FEATURES

# OpenAI's Responses request members. Server-side state and tools (previous_response_id, conversation,
# prompt) are known here and need the tenant's `limits.server_side` as well (dynaseal.policy.endpoints);
# `background` (answered later, outside the gateway) is not known.
RESPONSES = frozenset({
    "model", "input", "instructions", "max_output_tokens", "max_tool_calls", "parallel_tool_calls",
    "previous_response_id", "conversation", "prompt", "prompt_cache_key", "prompt_cache_retention", "reasoning",
    "safety_identifier", "stream", "stream_options", "temperature", "text", "tool_choice", "tools", "top_logprobs",
    "top_p", "truncation", "user", "include",
}) | RESTRICTED_FEATURES

# Anthropic's Messages request members (mcp_servers and container are server-side, as above).
MESSAGES = frozenset({
    "model", "messages", "max_tokens", "system", "stop_sequences", "stream", "temperature", "top_k", "top_p",
    "tools", "tool_choice", "thinking", "mcp_servers", "container", "context_management",
}) | RESTRICTED_FEATURES
MESSAGES_COUNT_TOKENS = frozenset({"model", "messages", "system", "tools", "tool_choice", "thinking", "mcp_servers",
                                   "context_management"})

# OpenAI's embeddings request members.
EMBEDDINGS = frozenset({"model", "input", "encoding_format", "dimensions", "user"})

# endpoint name -> the members its requests may carry.
KNOWN_MEMBERS: Mapping[str, frozenset[str]] = {"chat_completions": CHAT_COMPLETIONS}
KNOWN_MEMBERS = {**KNOWN_MEMBERS, "responses": RESPONSES, "messages": MESSAGES,
                 "messages_count_tokens": MESSAGES_COUNT_TOKENS, "embeddings": EMBEDDINGS}

# `stream_options` members a client may set: usage metering is the gateway's, so nothing that
# changes where or how often usage is reported (vLLM's `continuous_usage_stats` puts a running
# count in every chunk, which a client could cut off early).
STREAM_OPTIONS = frozenset({"include_usage"})


def check_members(body: Mapping[str, Any], known: frozenset[str], tenant_features: tuple[str, ...]) -> None:
    """Every member is known for this endpoint or one the tenant allows; restricted ones need the tenant too."""
    for name in body:  # no set built per request: a request has a handful of members
        if name in known:
            if name in RESTRICTED_FEATURES and name not in tenant_features and body[name] not in (None, False):
                raise Refusal(ErrorCode.PARAM_NOT_ALLOWED,
                              f"'{name}' changes what the provider charges or keeps: this tenant does not allow it",
                              name)
        elif name not in tenant_features:
            raise Refusal(ErrorCode.PARAM_NOT_ALLOWED,
                          f"parameter '{name}' is not supported here (a tenant may allow it in "
                          "limits.provider_features)", name)


def check_stream_options(body: Mapping[str, Any]) -> None:
    """`stream_options`, when given, is an object whose only member is `include_usage` (a boolean)."""
    options = body.get("stream_options")
    if options is None:
        return
    if not isinstance(options, dict):
        raise Refusal(ErrorCode.INVALID_REQUEST, "'stream_options' must be an object", "stream_options")
    for name, value in options.items():
        if name not in STREAM_OPTIONS:
            raise Refusal(ErrorCode.INVALID_REQUEST,
                          f"stream_options.{name} is not accepted: the gateway meters usage, only "
                          "include_usage may be set", "stream_options")
        if not isinstance(value, bool):
            raise Refusal(ErrorCode.INVALID_REQUEST, f"stream_options.{name} must be a boolean", "stream_options")
