"""Where content rules look: each endpoint's body turned into text per field name.

A field name is what a rule's `where` lists. The names are shared by every endpoint, so one rule
covers the same kind of text wherever it comes from:

- `user`: chat user messages and a predicted output (`prediction.content`); Responses `input` as a
  string, and user items; Messages user blocks.
- `system`: chat system and developer messages; Responses system/developer items; Messages `system`.
- `assistant`: assistant text and refusals, tool-call names and arguments (chat `tool_calls`,
  Responses function_call items, Messages tool_use input).
- `tool`: chat tool / function messages; Responses function_call_output; Messages tool_result blocks.
- `tools`: tool definitions (`tools`, chat's legacy `functions`) and a structured-output schema
  (`response_format`): every string, names included.
- `instructions`: Responses `instructions`.
- `input`: embeddings `input` (strings; token-id arrays carry no text).

A message with a role the table does not know counts as `user`: text the gateway cannot place is
treated as the least trusted. Image, audio and file parts carry no text and are not inspected.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import orjson

FIELDS = ("user", "system", "assistant", "tool", "tools", "instructions", "input")
_ROLE_FIELD = {"user": "user", "system": "system", "developer": "system", "assistant": "assistant",
               "tool": "tool", "function": "tool"}
# Parts whose text is in `text` (chat, Messages, Responses input/output) or `refusal`.
_TEXT_KEYS = ("text", "refusal")

Texts = dict[str, list[str]]


def _add(texts: Texts, field: str, value: Any) -> None:
    if isinstance(value, str) and value:
        texts.setdefault(field, []).append(value)


def _walk(texts: Texts, field: str, value: Any) -> None:
    """Every string in a JSON value, keys included (tool schemas hide text in both), in document order.

    A loop, not recursion: a body nested as deep as the JSON parser allows must not run out of stack here.
    """
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            _add(texts, field, item)
        elif isinstance(item, dict):
            for key, member in reversed(item.items()):
                pending += (member, key)
        elif isinstance(item, list):
            pending.extend(reversed(item))


def _arguments(texts: Texts, field: str, value: Any) -> None:
    """Tool-call arguments: the JSON string as sent and, when it parses, its decoded strings, so an
    escaped value (`\\u0041KIA...`) is seen as the provider will read it."""
    _add(texts, field, value)
    if isinstance(value, str):
        with contextlib.suppress(orjson.JSONDecodeError):
            _walk(texts, field, orjson.loads(value))
    elif value is not None:
        _walk(texts, field, value)


def _content(texts: Texts, field: str, content: Any) -> None:
    """A message's content: a string, or parts whose text is in `text` / `refusal`."""
    if isinstance(content, str):
        _add(texts, field, content)
        return
    for part in content if isinstance(content, list) else ():
        if not isinstance(part, dict):
            continue
        for key in _TEXT_KEYS:
            _add(texts, field, part.get(key))
        kind = part.get("type")
        if kind == "tool_result":  # Messages: a tool's answer, its own content inside
            _content(texts, "tool", part.get("content"))
        elif kind == "tool_use":  # Messages: the model's call, its input an object
            _walk(texts, "assistant", part.get("input"))


def _role_field(item: Mapping[str, Any]) -> str:
    role = item.get("role")
    return _ROLE_FIELD.get(role, "user") if isinstance(role, str) else "user"


def chat_texts(body: Mapping[str, Any]) -> Texts:
    """Chat completions: messages by role, assistant tool calls, tool definitions."""
    texts: Texts = {}
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else ():
        if not isinstance(message, dict):
            continue
        field = _role_field(message)
        _content(texts, field, message.get("content"))
        _add(texts, field, message.get("refusal"))
        calls = message.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                _add(texts, field, function.get("name"))
                _arguments(texts, field, function.get("arguments"))
        legacy = message.get("function_call")
        if isinstance(legacy, dict):
            _add(texts, field, legacy.get("name"))
            _arguments(texts, field, legacy.get("arguments"))
    _walk(texts, "tools", body.get("tools"))
    _walk(texts, "tools", body.get("functions"))
    _walk(texts, "tools", body.get("response_format"))
    prediction = body.get("prediction")
    if isinstance(prediction, dict):  # text the client wants echoed: the provider reads it as prompt
        _content(texts, "user", prediction.get("content"))
    return texts


def responses_texts(body: Mapping[str, Any]) -> Texts:
    """Responses: `instructions`, `input` (a string, or items by role and type), tool definitions."""
    texts: Texts = {}
    _add(texts, "instructions", body.get("instructions"))
    items = body.get("input")
    if isinstance(items, str):
        _add(texts, "user", items)
    for item in items if isinstance(items, list) else ():
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "function_call_output":
            _content(texts, "tool", item.get("output"))
        elif kind == "function_call":
            _add(texts, "assistant", item.get("name"))
            _arguments(texts, "assistant", item.get("arguments"))
        else:
            _content(texts, _role_field(item), item.get("content"))
    _walk(texts, "tools", body.get("tools"))
    return texts


def messages_texts(body: Mapping[str, Any]) -> Texts:
    """Anthropic Messages: `system` (a string or text blocks), messages' content blocks, tools."""
    texts: Texts = {}
    _content(texts, "system", body.get("system"))
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else ():
        if isinstance(message, dict):
            _content(texts, _role_field(message), message.get("content"))
    _walk(texts, "tools", body.get("tools"))
    return texts


def embeddings_texts(body: Mapping[str, Any]) -> Texts:
    """Embeddings: `input`, a string or a list of strings (token-id arrays carry no text)."""
    texts: Texts = {}
    value = body.get("input")
    if isinstance(value, str):
        _add(texts, "input", value)
    for item in value if isinstance(value, list) else ():
        _add(texts, "input", item)
    return texts


# By API: the extractor the authorizer uses for each endpoint it serves.
EXTRACTORS: dict[str, Callable[[Mapping[str, Any]], Texts]] = {
    "chat": chat_texts, "responses": responses_texts, "messages": messages_texts, "embeddings": embeddings_texts,
}
