"""Render a :class:`~mock_llm.completion.Completion` as OpenAI wire objects (JSON body or SSE frames).

Pure functions with no I/O: the HTTP layer decides about pacing (``x-mock-chunk-delay-ms``).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import orjson

from mock_llm.completion import Choice, Completion

SYSTEM_FINGERPRINT = "fp_mock_llm"
SSE_DONE = b"data: [DONE]\n\n"


def new_completion_id() -> str:
    """Return a fresh ``chatcmpl-`` id like OpenAI's."""
    return "chatcmpl-" + secrets.token_hex(12)


def completion_body(completion: Completion, completion_id: str, created: int) -> dict[str, Any]:
    """Build the non-streaming ``chat.completion`` object."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": completion.model,
        "choices": [
            {
                "index": choice.index,
                "message": {"role": "assistant", "content": choice.text},
                "finish_reason": choice.finish_reason,
                "logprobs": None,
            }
            for choice in completion.choices
        ],
        "usage": completion.usage(),
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }


def _sse(data: dict[str, Any]) -> bytes:
    """Frame one JSON object as a server-sent event."""
    return b"data: " + orjson.dumps(data) + b"\n\n"


def _choice_deltas(choice: Choice) -> Iterator[tuple[dict[str, Any], str | None]]:
    """Yield (delta, finish_reason) pairs for one choice: role, one per word, then the finish."""
    yield {"role": "assistant", "content": ""}, None
    last = len(choice.words) - 1
    for i, word in enumerate(choice.words):
        # Trailing space on all but the last word so concatenated deltas equal the JSON content.
        yield {"content": word if i == last else word + " "}, None
    yield {}, choice.finish_reason


def stream_events(completion: Completion, completion_id: str, created: int) -> Iterator[bytes]:
    """Yield every SSE frame of a streamed completion, ending with ``data: [DONE]``."""
    base: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": completion.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }
    if completion.include_usage:
        # OpenAI sends an explicit null usage on every chunk but the final one when include_usage is set.
        base["usage"] = None
    emitted = 0
    for choice in completion.choices:
        for delta, finish_reason in _choice_deltas(choice):
            chunk = dict(base)
            chunk["choices"] = [
                {"index": choice.index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ]
            if completion.continuous_usage:
                # vLLM: the usage so far in every chunk (one token per word emitted).
                emitted += 1 if delta.get("content") else 0
                chunk["usage"] = {"prompt_tokens": completion.prompt_tokens, "completion_tokens": emitted,
                                  "total_tokens": completion.prompt_tokens + emitted}
            yield _sse(chunk)
    if completion.include_usage:
        final = dict(base)
        final["choices"] = []
        final["usage"] = completion.usage()
        yield _sse(final)
    yield SSE_DONE


def now() -> int:
    """Return the current Unix time in whole seconds, as used by ``created``."""
    return int(time.time())
