"""Anthropic's Messages API (`POST /v1/messages`, `/v1/messages/count_tokens`), deterministic.

Same tokenizer as chat (one word = one token). Usage as Anthropic reports it: `input_tokens` are the
prompt tokens neither read from nor written to the cache; `cache_read_input_tokens` = the `system`
prompt's words (as if cached); `cache_creation_input_tokens` = words of blocks marked `cache_control`
outside the system prompt; `output_tokens` = the words answered, at most `max_tokens` (then
`stop_reason` is `max_tokens`). Given tools (and `tool_choice` not `none`), the model calls the first
one until the conversation holds `TOOL_ROUNDS` tool results, then answers in text.

The key is read from `x-api-key` or `Authorization: Bearer` (the anthropic SDK 2.x sends its api_key so).
Errors use Anthropic's envelope `{"type": "error", "error": {"type", "message"}}` and its statuses.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.responses import Response

from mock_llm.completion import PER_MESSAGE_TOKENS, PER_REQUEST_TOKENS, _generate, count_words

TOOL_ROUNDS = 2
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
               529: "overloaded_error"}
_SAMPLE = {"string": "mock", "integer": 1, "number": 1, "boolean": True, "array": [], "object": {}}


class AnthropicError(Exception):
    """An error rendered in Anthropic's envelope."""

    def __init__(self, status: int, message: str, type_: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message = status, message
        self.type = type_ or ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")

    def payload(self) -> dict[str, Any]:
        """`{"type": "error", "error": {...}}`."""
        return {"type": "error", "error": {"type": self.type, "message": self.message},
                "request_id": "req_" + secrets.token_hex(12)}

    def to_response(self) -> Response:
        """The JSON error response."""
        return Response(orjson.dumps(self.payload()), status_code=self.status, media_type="application/json")


def _bad(message: str) -> AnthropicError:
    return AnthropicError(400, message)


@dataclass(frozen=True, slots=True)
class MessageRun:
    """A validated Messages request and its deterministic answer."""

    model: str
    input_tokens: int
    cache_read: int
    cache_creation: int
    words: tuple[str, ...] = ()
    stop_reason: str = "end_turn"
    tool_use: dict[str, Any] | None = None
    message_id: str = field(default_factory=lambda: "msg_" + secrets.token_hex(12))

    @property
    def output_tokens(self) -> int:
        """Words answered (a tool call counts its input's words, at least one)."""
        if self.tool_use is not None:
            return max(1, count_words(orjson.dumps(self.tool_use["input"]).decode().replace('"', " ")))
        return len(self.words)

    def usage(self, output_tokens: int | None = None) -> dict[str, Any]:
        """The Messages `usage` object."""
        return {"input_tokens": self.input_tokens, "cache_creation_input_tokens": self.cache_creation,
                "cache_read_input_tokens": self.cache_read,
                "output_tokens": self.output_tokens if output_tokens is None else output_tokens}


def _block_words(content: Any) -> tuple[int, int, str]:
    """(words, words under cache_control, the text) of a message's content."""
    if isinstance(content, str):
        return count_words(content), 0, content
    if not isinstance(content, list):
        raise _bad("messages: content must be a string or an array of content blocks")
    words = cached = 0
    texts: list[str] = []
    for block in content:
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise _bad("messages: each content block must be an object with a type")
        text = block.get("text")
        if block["type"] == "tool_result":
            inner = block.get("content", "")
            text = inner if isinstance(inner, str) else " ".join(
                b.get("text", "") for b in inner if isinstance(b, dict))
        elif block["type"] == "tool_use":
            text = orjson.dumps(block.get("input", {})).decode().replace('"', " ")
        n = count_words(text) if isinstance(text, str) else 0
        words += n
        cached += n if block.get("cache_control") else 0
        if isinstance(text, str):
            texts.append(text)
    return words, cached, " ".join(texts)


def count_input(body: Any) -> tuple[int, int, int, str, list[dict[str, Any]]]:
    """Validate the prompt: (uncached input tokens, cache reads, cache writes, last user text, messages)."""
    if not isinstance(body, dict):
        raise _bad("The request body must be a JSON object.")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise _bad("model: Field required")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages: Field required (a non-empty array)")
    system = body.get("system")
    cache_read = 0 if system is None else _block_words(system)[0] + PER_MESSAGE_TOKENS
    total, creation, last_user = PER_REQUEST_TOKENS, 0, ""
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise _bad(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        words, cached, text = _block_words(message.get("content"))
        total += words + PER_MESSAGE_TOKENS
        creation += cached
        if message["role"] == "user":
            last_user = text
    tools = body.get("tools") or []
    total += sum(count_words(orjson.dumps(t).decode().replace('"', " ")) for t in tools if isinstance(t, dict))
    return total - creation, cache_read, creation, last_user, messages


def build_message(body: Any) -> MessageRun:
    """Validate a Messages body (`max_tokens` required, as Anthropic does) and compute its answer."""
    input_tokens, cache_read, creation, last_user, messages = count_input(body)
    limit = body.get("max_tokens")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise _bad("max_tokens: Field required (a positive integer)")
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or budget < 1024 or budget >= limit:
            raise _bad("thinking.budget_tokens: must be ≥ 1024 and less than max_tokens")
    # Client tools carry an input_schema; server tools (web_search_…) are the provider's own.
    tools = [t for t in body.get("tools") or () if isinstance(t, dict) and "input_schema" in t]
    choice = body.get("tool_choice") or {}
    results = sum(1 for m in messages if isinstance(m.get("content"), list)
                  for b in m["content"] if isinstance(b, dict) and b.get("type") == "tool_result")
    model = body["model"]
    if tools and choice.get("type") != "none" and results < TOOL_ROUNDS:
        schema = tools[0].get("input_schema") or {}
        props = schema.get("properties") or {}
        args = {n: _SAMPLE.get(str((props.get(n) or {}).get("type")), "mock") for n in schema.get("required") or ()}
        call = {"type": "tool_use", "id": "toolu_" + secrets.token_hex(12), "name": tools[0]["name"], "input": args}
        return MessageRun(model, input_tokens, cache_read, creation, stop_reason="tool_use", tool_use=call)
    generated = _generate(last_user, 0, limit)
    stop = "max_tokens" if generated.finish_reason == "length" else "end_turn"
    return MessageRun(model, input_tokens, cache_read, creation, generated.words, stop)


def _content(run: MessageRun) -> list[dict[str, Any]]:
    return [run.tool_use] if run.tool_use is not None else [{"type": "text", "text": " ".join(run.words)}]


def message_body(run: MessageRun) -> dict[str, Any]:
    """The non-streamed `message`."""
    return {"id": run.message_id, "type": "message", "role": "assistant", "model": run.model,
            "content": _content(run), "stop_reason": run.stop_reason, "stop_sequence": None, "usage": run.usage()}


def _event(kind: str, **data: Any) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


def message_events(run: MessageRun, error_after: int = 0, error_type: str = "overloaded_error") -> Iterator[bytes]:
    """Every SSE event of a streamed message (`message_start` … `message_stop`, with a `ping`).

    `error_after` > 0: an `error` event replaces the stream after that many content deltas, as Anthropic
    sends when it is overloaded mid-answer."""
    start: dict[str, Any] = {"id": run.message_id, "type": "message", "role": "assistant", "model": run.model,
                             "content": [], "stop_reason": None, "stop_sequence": None,
                             "usage": run.usage(output_tokens=1)}
    yield _event("message_start", message=start)
    if run.tool_use is not None:
        yield _event("content_block_start", index=0, content_block={**run.tool_use, "input": {}})
        yield _event("ping")
        yield _event("content_block_delta", index=0,
                     delta={"type": "input_json_delta", "partial_json": orjson.dumps(run.tool_use["input"]).decode()})
    else:
        yield _event("content_block_start", index=0, content_block={"type": "text", "text": ""})
        yield _event("ping")
        last = len(run.words) - 1
        for i, word in enumerate(run.words):
            if error_after and i == error_after:
                yield _event("error", error={"type": error_type, "message": "Overloaded"})
                return
            yield _event("content_block_delta", index=0,
                         delta={"type": "text_delta", "text": word if i == last else word + " "})
    yield _event("content_block_stop", index=0)
    yield _event("message_delta", delta={"stop_reason": run.stop_reason, "stop_sequence": None},
                 usage={"output_tokens": run.output_tokens})
    yield _event("message_stop")
