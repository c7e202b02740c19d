"""OpenAI's Responses API (`POST /v1/responses`): the key's policy, a true reservation bound, additions.

- cap: `max_output_tokens` (reasoning included, as OpenAI counts it) within the key's cap; missing, the
  gateway adds the key's cap (strict tenants: refused);
- `store` defaults to false toward the provider: added as `"store":false` unless the tenant allows
  storing (`limits.provider_features: [store]`), where the provider's default stands;
- stored state (`previous_response_id`, `conversation`, `prompt`, `item_reference` items) and server
  tools are refused unless the tenant allows them, then reserved at its ceiling (server_side);
- prompt bound: body bytes (× the model's template factor) + 32 + media parts × media_part_tokens.
  Streams always end with the usage (`response.completed`): nothing to add.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from dynaseal.errors import ErrorCode
from dynaseal.keys.claims import VerifiedKey
from dynaseal.policy.documents import count_documents, document_tokens
from dynaseal.policy.endpoints.common import (
    check_cap,
    check_end_user,
    check_key_params,
    check_known,
    check_model,
    check_names,
    invalid,
    positive_int,
    price_of,
    type_of,
)
from dynaseal.policy.endpoints.server_side import feature_of, server_side_tokens
from dynaseal.policy.request_policy import CheckedRequest
from dynaseal.policy.reservation_bound import allowance_for, budget_applies
from dynaseal.policy.reservation_bound import prompt_bound as chat_prompt_bound

CORE = frozenset({"model", "input", "instructions", "max_output_tokens", "stream", "user", "store", "tools",
                  "tool_choice"})
# Tools the client runs itself: their results come back in the body; function and custom tools' definitions
# are in it too, the built-in ones are sent by name and their definitions added by the provider (a bound each).
CLIENT_TOOLS = frozenset({"function", "custom", "local_shell", "shell", "apply_patch"})
BUILT_IN_TOOL_TOKENS = {"local_shell": 1024, "shell": 1024, "apply_patch": 1024}
SERVER_STATE = ("previous_response_id", "conversation", "prompt")
# Parts and items whose text is in the body; input_image / input_file / input_audio and unknown items are media.
TEXT_PARTS = frozenset({"input_text", "output_text", "text", "refusal", "summary_text", "reasoning_text"})
TEXT_ITEMS = frozenset({"function_call", "custom_tool_call", "reasoning", "local_shell_call", "shell_call",
                        "apply_patch_call", "mcp_approval_response", "compaction"})


def _items(body: Mapping[str, Any]) -> list[Any]:
    raw = body.get("input")
    if isinstance(raw, str):
        return []
    if not isinstance(raw, list) or not raw:
        raise invalid("'input' must be a string or a non-empty array of items", "input")
    return raw


def _parts(value: Any) -> Iterator[Any]:
    if isinstance(value, list):
        yield from value


def _media_parts(value: Any) -> int:
    """Parts of a content array whose text is not in the body (images, files, audio, unknown ones)."""
    return sum(1 for p in _parts(value) if not isinstance(p, dict) or type_of(p, "input") not in TEXT_PARTS)


def media_and_references(items: list[Any]) -> tuple[int, bool]:
    """(media parts, whether any item references stored state)."""
    media, referenced = 0, False
    for item in items:
        if not isinstance(item, dict):
            raise invalid("each 'input' item must be an object", "input")
        # An item without a type is a message when it has a role, else a reference to a stored item by its
        # `id` (OpenAI's ItemReference: `type` optional): stored context the body does not show.
        kind = type_of(item, "input") or ("message" if "role" in item else "item_reference")
        if kind == "item_reference":
            referenced = True
        elif kind == "message" or "role" in item:
            content = item.get("content")
            if content is not None and not isinstance(content, str | list):
                raise invalid("an input message's content must be a string or an array of parts", "input")
            media += _media_parts(content)
        elif kind in ("function_call_output", "custom_tool_call_output"):
            media += _media_parts(item.get("output"))
        elif kind not in TEXT_ITEMS:
            media += 1  # computer screenshots, tool results of server tools, a newer item type
    return media, referenced


def _features(body: Mapping[str, Any], referenced: bool) -> list[str]:
    features = [name for name in SERVER_STATE if body.get(name) is not None]
    if referenced:
        features.append("item_reference")
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise invalid("'tools' must be an array", "tools")
    for tool in tools or ():
        kind = tool.get("type") if isinstance(tool, dict) else None
        if not isinstance(kind, str):
            raise invalid("each tool must be an object with a 'type'", "tools")
        if kind not in CLIENT_TOOLS:
            features.append(feature_of(kind))
    return features


def _media_tokens(key: VerifiedKey, media: int) -> int:
    if not media:
        return 0
    per_part = key.tenant.limits.media_part_tokens
    if per_part is None:
        if budget_applies(key):
            raise invalid("a token or money budget applies and images, files or audio have no bounded cost here "
                          "(the tenant sets no media_part_tokens): send text only", "input",
                          ErrorCode.PARAM_NOT_ALLOWED)
        return 0
    return media * per_part


def check_responses(body: dict[str, Any], key: VerifiedKey, body_size: int) -> CheckedRequest:
    """Enforce the key's policy on a Responses body of `body_size` bytes."""
    check_known(body, key, "responses")
    model = check_model(body, key)
    items = _items(body)
    check_names(items, "input")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise invalid("'stream' must be a boolean", "stream")
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or set(options) - {"include_obfuscation"}):
        raise invalid("stream_options may hold only include_obfuscation here", "stream_options")
    limits = key.tenant.limits
    prefix = ""
    cap = positive_int(body, "max_output_tokens")
    if cap is None:
        if limits.strict_requests:
            raise invalid("this key caps tokens: set 'max_output_tokens'", "max_output_tokens",
                          ErrorCode.MAX_TOKENS_REQUIRED)
        if "max_output_tokens" in body:
            raise invalid("omit 'max_output_tokens' or give a positive integer", "max_output_tokens")
        cap, prefix = key.max_tokens, f'"max_output_tokens":{key.max_tokens},'
    check_cap(cap, key, "max_output_tokens")
    if "store" not in body and "store" not in limits.provider_features:
        prefix += '"store":false,'
    check_end_user(body, key, ("user", "safety_identifier"))
    check_key_params(body, key, CORE)
    media, referenced = media_and_references(items)
    features = _features(body, referenced)  # checks `tools` is a list of typed objects
    built_in = sum(BUILT_IN_TOOL_TOKENS.get(tool["type"], 0) for tool in body.get("tools") or ())
    extra = server_side_tokens(key, features) + _media_tokens(key, media) + built_in \
        + document_tokens(key, count_documents(items), "input")
    allowance = allowance_for(limits, model)
    prompt = chat_prompt_bound(body_size, [], key, allowance) + extra
    return CheckedRequest(model, stream, 1, cap, prompt, prefix, False, price_of(key, model),
                          allowance.reasoning_tokens)
