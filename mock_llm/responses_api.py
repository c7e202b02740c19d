"""OpenAI's Responses API (`POST /v1/responses`), deterministic: JSON body or the SSE event sequence.

Same tokenizer as chat (one word = one token). `input_tokens` = words of `instructions` and of every
input item's text + 4 per item + 3; `input_tokens_details.cached_tokens` = the instructions' share
(as if cached); `output_tokens` = the words answered (capped by `max_output_tokens`, then the response
is `incomplete`); `reasoning_tokens` = half of them when `reasoning` is set.

Tools: given function tools (and `tool_choice` not "none"), the model calls the first one, with
arguments filling the schema's required members, until the input holds `TOOL_ROUNDS` function results;
then it answers in text. An agent loop therefore runs several turns and ends.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from mock_llm.completion import MISSING_MODEL, PER_MESSAGE_TOKENS, PER_REQUEST_TOKENS, _generate, count_words
from mock_llm.errors import ApiError, invalid_request

TOOL_ROUNDS = 2
_SAMPLE = {"string": "mock", "integer": 1, "number": 1, "boolean": True, "array": [], "object": {}}


@dataclass(frozen=True, slots=True)
class ResponseRun:
    """A validated Responses request and its deterministic answer."""

    request: dict[str, Any]
    input_tokens: int
    cached_tokens: int
    words: tuple[str, ...] = ()
    truncated: bool = False
    call: dict[str, Any] | None = None  # a function_call output item instead of text
    reasoning: bool = False
    response_id: str = field(default_factory=lambda: "resp_" + secrets.token_hex(24))

    @property
    def output_tokens(self) -> int:
        """Words answered, or the call's arguments' words (at least one token for a call)."""
        if self.call is not None:
            return max(1, count_words(self.call["arguments"].replace('"', " ")))
        return len(self.words)

    def usage(self) -> dict[str, Any]:
        """The Responses `usage` object."""
        out = self.output_tokens
        return {"input_tokens": self.input_tokens, "input_tokens_details": {"cached_tokens": self.cached_tokens},
                "output_tokens": out,
                "output_tokens_details": {"reasoning_tokens": out // 2 if self.reasoning else 0},
                "total_tokens": self.input_tokens + out}


def _item_text(item: Any) -> str:
    """The words an input item contributes (message content, function output or arguments)."""
    if isinstance(item, str):
        return item
    if not isinstance(item, dict):
        raise invalid_request("Invalid 'input': items must be objects.", "input")
    content = item.get("content", item.get("output", item.get("arguments", "")))
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _arguments(tool: dict[str, Any]) -> str:
    """JSON arguments with every required member of the tool's schema filled by a sample of its type."""
    params = tool.get("parameters") or {}
    props = params.get("properties") or {}
    args = {name: _SAMPLE.get(str((props.get(name) or {}).get("type")), "mock")
            for name in params.get("required") or ()}
    return orjson.dumps(args).decode()


def build_response(body: Any) -> ResponseRun:
    """Validate a Responses body and compute its answer."""
    if not isinstance(body, dict):
        raise invalid_request("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid_request("Missing required parameter: 'model'.", "model")
    if model == MISSING_MODEL:
        raise ApiError(404, f"The model `{model}` does not exist or you do not have access to it.",
                       code="model_not_found")
    raw_input = body.get("input")
    items = [raw_input] if isinstance(raw_input, str) else raw_input
    if not isinstance(items, list) or not items:
        raise invalid_request("Invalid 'input': expected a string or a non-empty array.", "input")
    limit = body.get("max_output_tokens")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 16):
        raise invalid_request("Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16.",
                              "max_output_tokens", "integer_below_min_value")
    instructions = body.get("instructions") or ""
    cached = count_words(instructions) + PER_MESSAGE_TOKENS if instructions else 0
    texts = [_item_text(item) for item in items]
    input_tokens = PER_REQUEST_TOKENS + cached + sum(count_words(t) + PER_MESSAGE_TOKENS for t in texts)
    reasoning = body.get("reasoning") is not None
    tools = [t for t in body.get("tools") or () if isinstance(t, dict) and t.get("type") == "function"]
    results = sum(1 for item in items if isinstance(item, dict) and item.get("type") == "function_call_output")
    if tools and body.get("tool_choice") != "none" and results < TOOL_ROUNDS:
        call = {"id": "fc_" + secrets.token_hex(24), "type": "function_call", "status": "completed",
                "call_id": "call_" + secrets.token_hex(12), "name": tools[0]["name"], "arguments": _arguments(tools[0])}
        return ResponseRun(body, input_tokens, cached, call=call, reasoning=reasoning)
    choice = _generate(texts[-1], 0, limit)
    return ResponseRun(body, input_tokens, cached, choice.words, choice.finish_reason == "length", reasoning=reasoning)


def _message_item(run: ResponseRun, item_id: str, status: str, text: str | None) -> dict[str, Any]:
    content = [] if text is None else [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}


def response_object(run: ResponseRun, status: str, output: list[dict[str, Any]]) -> dict[str, Any]:
    """The `response` object at a given status (usage only once it is over)."""
    body = run.request
    done = status in ("completed", "incomplete")
    return {
        "id": run.response_id, "object": "response", "created_at": int(time.time()), "status": status,
        "error": None, "background": False,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
        "model": body["model"], "output": output, "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": (body.get("reasoning") or {}).get("effort"), "summary": None},
        "store": body.get("store", True), "temperature": body.get("temperature", 1.0),
        "text": body.get("text", {"format": {"type": "text"}}), "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools", []), "top_p": body.get("top_p", 1.0), "truncation": "disabled",
        "usage": run.usage() if done else None, "user": body.get("user"), "metadata": body.get("metadata") or {},
    }


def final_status(run: ResponseRun) -> str:
    """`incomplete` when the answer was cut at max_output_tokens."""
    return "incomplete" if run.truncated else "completed"


def response_body(run: ResponseRun) -> dict[str, Any]:
    """The non-streamed response."""
    item = run.call if run.call is not None else _message_item(run, "msg_" + secrets.token_hex(24), "completed",
                                                               " ".join(run.words))
    return response_object(run, final_status(run), [item])


def _event(seq: list[int], kind: str, **data: Any) -> bytes:
    payload = {"type": kind, "sequence_number": seq[0], **data}
    seq[0] += 1
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def response_events(run: ResponseRun) -> Iterator[bytes]:
    """Every SSE event of a streamed response, `response.created` to `response.completed` (or `.incomplete`)."""
    seq = [0]
    yield _event(seq, "response.created", response=response_object(run, "in_progress", []))
    yield _event(seq, "response.in_progress", response=response_object(run, "in_progress", []))
    if run.call is not None:
        item = run.call
        yield _event(seq, "response.output_item.added", output_index=0,
                     item={**item, "arguments": "", "status": "in_progress"})
        yield _event(seq, "response.function_call_arguments.delta", item_id=item["id"], output_index=0,
                     delta=item["arguments"])
        yield _event(seq, "response.function_call_arguments.done", item_id=item["id"], output_index=0,
                     arguments=item["arguments"], name=item["name"])
        yield _event(seq, "response.output_item.done", output_index=0, item=item)
        yield _event(seq, "response.completed", response=response_object(run, "completed", [item]))
        return
    item_id = "msg_" + secrets.token_hex(24)
    text = " ".join(run.words)
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    yield _event(seq, "response.output_item.added", output_index=0,
                 item=_message_item(run, item_id, "in_progress", None))
    yield _event(seq, "response.content_part.added", **where,
                 part={"type": "output_text", "text": "", "annotations": [], "logprobs": []})
    last = len(run.words) - 1
    for i, word in enumerate(run.words):
        yield _event(seq, "response.output_text.delta", **where, delta=word if i == last else word + " ", logprobs=[])
    yield _event(seq, "response.output_text.done", **where, text=text, logprobs=[])
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    yield _event(seq, "response.content_part.done", **where, part=part)
    item = _message_item(run, item_id, "completed", text)
    yield _event(seq, "response.output_item.done", output_index=0, item=item)
    status = final_status(run)
    yield _event(seq, f"response.{status}", response=response_object(run, status, [item]))
