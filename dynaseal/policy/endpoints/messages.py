"""Anthropic's Messages API (`POST /v1/messages`, `/v1/messages/count_tokens`): the key's policy.

- cap: `max_tokens` (Anthropic requires it; thinking included) within the key's cap, refused above it;
  missing, the gateway adds the key's cap (strict tenants: refused). An enabled `thinking.budget_tokens`
  must fit inside `max_tokens`;
- server tools (web_search, web_fetch, code_execution, …), `mcp_servers` and `container` are refused
  unless the tenant allows them, then reserved at its ceiling (server_side); the tools Anthropic defines
  for the client to run (bash, text_editor, computer, memory) and custom tools are in the body;
- prompt bound: body bytes (× template factor) + 32 + image/document blocks × media_part_tokens.
  Streams always carry usage (`message_start`, `message_delta`): nothing to add.
- count_tokens generates nothing: key, model and members checked, nothing reserved.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from dynaseal.errors import ErrorCode, Refusal
from dynaseal.keys.claims import VerifiedKey
from dynaseal.policy.documents import count_documents, document_tokens
from dynaseal.policy.endpoints.common import (
    check_cap,
    check_key_params,
    check_known,
    check_model,
    check_names,
    invalid,
    positive_int,
    price_of,
    type_of,
)
from dynaseal.policy.endpoints.responses import _media_tokens
from dynaseal.policy.endpoints.server_side import feature_of, server_side_tokens
from dynaseal.policy.request_policy import CheckedRequest
from dynaseal.policy.reservation_bound import allowance_for
from dynaseal.policy.reservation_bound import prompt_bound as chat_prompt_bound

CORE = frozenset({"model", "messages", "max_tokens", "system", "stream", "tools", "tool_choice"})
# Tools Anthropic defines for the client to run, and custom tools (an input_schema, type absent or "custom").
CLIENT_TOOLS = frozenset({"custom", "bash", "text_editor", "computer", "memory"})
# Prompt tokens Anthropic adds that the body does not show: a tool-use system prompt whenever tools are given
# (346 on current models), and the definitions of the tools it defines, sent by name only (bash ≈ 245,
# text_editor ≈ 700, computer ≈ 735 plus its own ≈ 500-token system prompt). Rounded up, as bounds.
TOOL_PROMPT_TOKENS = 512
DEFINED_TOOL_TOKENS = {"custom": 0, "bash": 512, "text_editor": 1024, "computer": 1536, "memory": 1024}
MEDIA_BLOCKS = frozenset({"image", "document", "container_upload"})
SERVER_MEMBERS = ("mcp_servers", "container")


def _blocks(messages: list[Any]) -> Iterator[dict[str, Any]]:
    """Every content block, tool results' inner blocks included."""
    for message in messages:
        if not isinstance(message, dict):
            raise invalid("each message must be an object", "messages")
        content = message.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise invalid("message content must be a string or an array of blocks", "messages")
        for block in content:
            if not isinstance(block, dict):
                raise invalid("each content block must be an object", "messages")
            type_of(block, "messages")  # compared by value below: a string or absent
            yield block
            inner = block.get("content")
            if block.get("type") == "tool_result" and isinstance(inner, list):
                for nested in inner:
                    if isinstance(nested, dict):
                        type_of(nested, "messages")
                        yield nested


def _media_blocks(messages: list[Any]) -> int:
    """Image, document and upload blocks at any depth: a block may nest others (a tool result's content, a
    web fetch result's document), and each costs what a media block costs wherever it sits. A tool call's
    `input` is the model's own JSON, not content: not looked into."""
    count, pending = 0, list(messages)
    while pending:  # a loop, not recursion: bodies nest as deep as the JSON parser allows
        value = pending.pop()
        if isinstance(value, list):
            pending.extend(value)
        elif isinstance(value, dict):
            kind = value.get("type")
            if isinstance(kind, str) and kind in MEDIA_BLOCKS:
                count += 1
            pending.extend(v for k, v in value.items() if not (k == "input" and kind == "tool_use"))
    return count


def hidden_tool_tokens(body: Mapping[str, Any]) -> int:
    """Prompt tokens of the tools Anthropic adds beyond the body's bytes (0 without tools)."""
    tools = body.get("tools")
    if not isinstance(tools, list) or not tools:
        return 0
    defined = (feature_of(t["type"]) for t in tools if isinstance(t, dict) and isinstance(t.get("type"), str))
    return TOOL_PROMPT_TOKENS + sum(DEFINED_TOOL_TOKENS.get(name, 0) for name in defined)


def _features(body: Mapping[str, Any]) -> list[str]:
    features = [name for name in SERVER_MEMBERS if body.get(name) is not None]
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise invalid("'tools' must be an array", "tools")
    for tool in tools or ():
        if not isinstance(tool, dict):
            raise invalid("each tool must be an object", "tools")
        kind = tool.get("type")
        if kind is None:
            continue  # a custom tool
        if not isinstance(kind, str):
            raise invalid("a tool's 'type' must be a string", "tools")
        if feature_of(kind) not in CLIENT_TOOLS:
            features.append(feature_of(kind))
    return features


def _messages(body: Mapping[str, Any]) -> list[Any]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("'messages' must be a non-empty array", "messages")
    return messages


def _thinking(body: Mapping[str, Any], max_tokens: int) -> None:
    thinking = body.get("thinking")
    if thinking is None:
        return
    if not isinstance(thinking, dict):
        raise invalid("'thinking' must be an object", "thinking")
    budget = thinking.get("budget_tokens")
    if thinking.get("type") == "enabled":
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise invalid("thinking.budget_tokens must be a positive integer", "thinking.budget_tokens")
        if budget >= max_tokens:
            raise invalid(f"thinking.budget_tokens = {budget} must be less than max_tokens = {max_tokens}",
                          "thinking.budget_tokens")


def _metadata(body: Mapping[str, Any], key: VerifiedKey) -> Mapping[str, Any]:
    """Messages' `metadata` holds only the end user's id (no storage, no price): allowed, as the key's sub on a
    key with one. The body without it, for the member check (chat's `metadata` is a restricted feature)."""
    metadata = body.get("metadata")
    if metadata is None:
        return body
    if not isinstance(metadata, dict) or set(metadata) - {"user_id"}:
        raise invalid("metadata may hold only user_id", "metadata")
    if key.sub is not None and metadata.get("user_id") not in (None, key.sub):
        raise Refusal(ErrorCode.PARAM_NOT_ALLOWED, "metadata.user_id must be this key's end user (its sub)",
                      "metadata.user_id")
    return {k: v for k, v in body.items() if k != "metadata"}


def _cache_ttls(body: Mapping[str, Any], key: VerifiedKey) -> None:
    """A cache breakpoint's `ttl` other than the default 5m (a 1h write costs 2x input, not 1.25x: more than
    one `cache_write` price can say) only where the tenant lists `cache_control` in provider_features."""
    if "cache_control" in key.tenant.limits.provider_features:
        return
    pending: list[Any] = [body]
    while pending:  # a loop, not recursion: bodies nest as deep as the JSON parser allows
        value = pending.pop()
        if isinstance(value, list):
            pending.extend(value)
        elif isinstance(value, dict):
            control = value.get("cache_control")
            if isinstance(control, dict) and control.get("ttl", "5m") != "5m":
                raise Refusal(ErrorCode.PARAM_NOT_ALLOWED, "a cache_control ttl other than 5m changes what the "
                              "provider charges: this tenant does not allow it", "cache_control.ttl")
            pending.extend(value.values())


def check_messages(body: dict[str, Any], key: VerifiedKey, body_size: int) -> CheckedRequest:
    """Enforce the key's policy on a Messages body of `body_size` bytes."""
    check_known(_metadata(body, key), key, "messages")
    model = check_model(body, key)
    messages = _messages(body)
    check_names(messages, "messages")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise invalid("'stream' must be a boolean", "stream")
    limits = key.tenant.limits
    prefix = ""
    cap = positive_int(body, "max_tokens")
    if cap is None:
        if limits.strict_requests or "max_tokens" in body:
            raise invalid("'max_tokens' is required: a positive integer within this key's cap", "max_tokens",
                          ErrorCode.MAX_TOKENS_REQUIRED)
        cap, prefix = key.max_tokens, f'"max_tokens":{key.max_tokens},'
    check_cap(cap, key, "max_tokens")
    _thinking(body, cap)
    _cache_ttls(body, key)
    check_key_params(body, key, CORE)
    for _ in _blocks(messages):  # validates every block and its type
        pass
    media = _media_blocks(messages)
    system = body.get("system")
    if isinstance(system, list):
        media += sum(1 for b in system if isinstance(b, dict) and type_of(b, "system") in MEDIA_BLOCKS)
    extra = server_side_tokens(key, _features(body)) + _media_tokens(key, media) + hidden_tool_tokens(body) \
        + document_tokens(key, count_documents([messages, system]), "messages")
    allowance = allowance_for(limits, model)
    prompt = chat_prompt_bound(body_size, [], key, allowance) + extra
    return CheckedRequest(model, stream, 1, cap, prompt, prefix, False, price_of(key, model),
                          allowance.reasoning_tokens)


def check_count_tokens(body: dict[str, Any], key: VerifiedKey, body_size: int) -> CheckedRequest:
    """count_tokens: the same key, model and member checks; it generates nothing and reserves nothing."""
    check_known(body, key, "messages_count_tokens")
    model = check_model(body, key)
    check_names(_messages(body), "messages")
    server_side_tokens(key, _features(body))
    return CheckedRequest(model, False, 1, 0, 0)
