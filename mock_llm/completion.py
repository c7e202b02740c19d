"""Request validation plus the deterministic "model": tokenizer, completion text and usage.

Tokenizer rule (kept trivially predictable so tests can compute expected numbers by hand):

* a token is one whitespace-separated word (``str.split()``);
* ``prompt_tokens = sum(words(message.content) + 4 for each message) + 3`` -- the +4 per message and
  +3 per request mimic OpenAI's per-message / reply-priming overhead; role and name are not counted;
  list content counts the words of every part's ``text`` (non-text parts count 0);
* each choice naturally answers ``DEFAULT_COMPLETION_WORDS`` words, truncated to ``max_completion_tokens``
  (preferred) or ``max_tokens``; ``completion_tokens`` is the sum of emitted words over all choices.
* ``prompt_tokens_details.cached_tokens`` = the prompt tokens of the leading system/developer messages
  (as if that prefix were in the provider's prompt cache; 0 when the first message is not one);
* ``completion_tokens_details.reasoning_tokens`` = ``completion_tokens // 2`` when the request sets
  ``reasoning_effort`` (as an o-series model would), else 0. Both are parts of the counts above, as in
  OpenAI's usage.
* vLLM's ``stream_options.continuous_usage_stats`` (or the test switch ``x-mock-usage: continuous``,
  which reaches the mock where a gateway refuses the member) puts the usage so far in every chunk.

The same :class:`Completion` object feeds both the JSON and the SSE renderer, so streaming and
non-streaming usage for an identical request are identical by construction.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

from mock_llm.errors import ApiError, invalid_request

DEFAULT_COMPLETION_WORDS = 24
MAX_CHOICES = 8
PER_MESSAGE_TOKENS = 4
PER_REQUEST_TOKENS = 3
MISSING_MODEL = "mock-missing-model"
VALID_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

# 64 entries so any odd stride visits every word before repeating (stride and length are coprime).
# fmt: off
_WORDS: tuple[str, ...] = (
    "lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit", "sed", "do",
    "eiusmod", "tempor", "incididunt", "ut", "labore", "et", "dolore", "magna", "aliqua", "enim", "ad",
    "minim", "veniam", "quis", "nostrud", "exercitation", "ullamco", "laboris", "nisi", "aliquip", "ex",
    "ea", "commodo", "consequat", "duis", "aute", "irure", "in", "reprehenderit", "voluptate", "velit",
    "esse", "cillum", "fugiat", "nulla", "pariatur", "excepteur", "sint", "occaecat", "cupidatat",
    "non", "proident", "sunt", "culpa", "qui", "officia", "deserunt", "mollit", "anim", "id", "est",
    "laborum", "seal", "edge",
)
# fmt: on
assert len(_WORDS) == 64  # guards the coprime-stride property above


@dataclass(frozen=True, slots=True)
class Choice:
    """One generated choice: its words and why generation stopped."""

    index: int
    words: tuple[str, ...]
    finish_reason: str

    @property
    def text(self) -> str:
        """Return the full message content (words joined by single spaces)."""
        return " ".join(self.words)


@dataclass(frozen=True, slots=True)
class Completion:
    """A fully validated request and its deterministic answer."""

    model: str
    stream: bool
    include_usage: bool
    prompt_tokens: int
    choices: tuple[Choice, ...]
    cached_tokens: int = 0
    reasoning: bool = False
    # vLLM's continuous_usage_stats: every chunk carries the usage so far (prompt + words emitted).
    continuous_usage: bool = False

    @property
    def completion_tokens(self) -> int:
        """Return the number of emitted words summed over all choices."""
        return sum(len(c.words) for c in self.choices)

    @property
    def reasoning_tokens(self) -> int:
        """Return how many of the completion tokens count as reasoning."""
        return self.completion_tokens // 2 if self.reasoning else 0

    def usage(self) -> dict[str, Any]:
        """Return the OpenAI ``usage`` object, with the cached and reasoning details."""
        completion = self.completion_tokens
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": self.cached_tokens, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
        }


def count_words(text: str) -> int:
    """Count tokens in ``text`` under the mock tokenizer (whitespace-separated words)."""
    return len(text.split())


def _content_text(content: Any, index: int) -> str:
    """Validate one message's content and flatten it to plain text."""
    if isinstance(content, str):
        return content
    param = f"messages.[{index}].content"
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            if not isinstance(part, dict):
                raise invalid_request(f"Invalid '{param}': content parts must be objects.", param)
            text = part.get("text")
            if text is None and part.get("type") not in (None, "text"):
                continue  # images/audio carry no words under this tokenizer
            if not isinstance(text, str):
                raise invalid_request(f"Invalid '{param}': text content parts need a string 'text'.", param)
            texts.append(text)
        return " ".join(texts)
    raise invalid_request(f"Invalid type for '{param}': expected a string or an array of parts.", param)


def _optional_int(body: dict[str, Any], name: str, low: int, high: int | None = None) -> int | None:
    """Read an optional integer field, enforcing OpenAI-like bounds."""
    value = body.get(name)
    if value is None:
        return None
    # bool is an int subclass; OpenAI rejects true/false for integer fields, so do we.
    if not isinstance(value, int) or isinstance(value, bool):
        raise invalid_request(f"Invalid type for '{name}': expected an integer.", name, "invalid_type")
    if value < low:
        raise invalid_request(
            f"Invalid '{name}': integer below minimum value. Expected a value >= {low}, but got {value}.",
            name,
            "integer_below_min_value",
        )
    if high is not None and value > high:
        raise invalid_request(
            f"Invalid '{name}': integer above maximum value. Expected a value <= {high}, but got {value}.",
            name,
            "integer_above_max_value",
        )
    return value


def _generate(seed_text: str, index: int, limit: int | None) -> Choice:
    """Produce the deterministic words of choice ``index`` for a prompt, truncated to ``limit``."""
    seed = zlib.crc32(seed_text.encode("utf-8"))  # stable across processes, unlike hash()
    start = (seed + 17 * index) % len(_WORDS)
    stride = 2 * ((seed >> 8) % (len(_WORDS) // 2)) + 1  # odd => coprime with 64
    words = [_WORDS[(start + k * stride) % len(_WORDS)] for k in range(DEFAULT_COMPLETION_WORDS)]
    # Punctuation is glued to words so it never changes the word count.
    words[0] = words[0].capitalize()
    words[-1] += "."
    if limit is not None and limit < DEFAULT_COMPLETION_WORDS:
        return Choice(index, tuple(words[:limit]), "length")
    return Choice(index, tuple(words), "stop")


def build_completion(body: Any, continuous_usage: bool = False) -> Completion:
    """Validate an OpenAI chat-completions body and compute its deterministic completion.

    `continuous_usage` forces usage in every chunk, as the body's `continuous_usage_stats` asks."""
    if not isinstance(body, dict):
        raise invalid_request("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid_request("you must provide a model parameter", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid_request("Invalid 'messages': expected a non-empty array of message objects.", "messages")
    prompt_tokens, cached_tokens, last_user_text = _prompt(messages)

    n = _optional_int(body, "n", 1, MAX_CHOICES) or 1
    limit = _optional_int(body, "max_completion_tokens", 1)
    if limit is None:
        limit = _optional_int(body, "max_tokens", 1)
    stream, include_usage, continuous_usage = _stream_flags(body, continuous_usage)

    if model == MISSING_MODEL:
        raise ApiError(
            404,
            f"The model `{model}` does not exist or you do not have access to it.",
            code="model_not_found",
        )
    choices = tuple(_generate(last_user_text, i, limit) for i in range(n))
    return Completion(model, bool(stream), include_usage, prompt_tokens, choices, cached_tokens,
                      body.get("reasoning_effort") is not None, continuous_usage and bool(stream))


def _prompt(messages: list[Any]) -> tuple[int, int, str]:
    """Prompt tokens, the cached ones (the leading system/developer turns) and the last user turn's text."""
    prompt_tokens = PER_REQUEST_TOKENS
    cached_tokens, cached_prefix = 0, True
    last_user_text = ""
    for i, message in enumerate(messages):
        role, text = _message_text(message, i)
        prompt_tokens += count_words(text) + PER_MESSAGE_TOKENS
        cached_prefix = cached_prefix and role in ("system", "developer")
        if cached_prefix:
            cached_tokens += count_words(text) + PER_MESSAGE_TOKENS
        if role == "user":
            last_user_text = text
    return prompt_tokens, cached_tokens, last_user_text


def _message_text(message: Any, i: int) -> tuple[str, str]:
    """One message's role and text, validated as OpenAI does."""
    if not isinstance(message, dict):
        raise invalid_request(f"Invalid 'messages.[{i}]': expected an object.", f"messages.[{i}]")
    role = message.get("role")
    if not isinstance(role, str) or role not in VALID_ROLES:
        raise invalid_request(
            f"Invalid 'messages.[{i}].role': expected one of {sorted(VALID_ROLES)}.", f"messages.[{i}].role"
        )
    if "content" not in message:
        raise invalid_request(f"Missing required parameter: 'messages.[{i}].content'.", f"messages.[{i}].content")
    content = message["content"]
    # OpenAI allows null content on assistant turns that only carry tool calls.
    text = "" if content is None and role == "assistant" else _content_text(content, i)
    return role, text


def _stream_flags(body: dict[str, Any], continuous_usage: bool) -> tuple[bool | None, bool, bool]:
    """`stream`, `stream_options.include_usage`, and usage in every chunk (forced or asked for)."""
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise invalid_request("Invalid type for 'stream': expected a boolean.", "stream", "invalid_type")
    stream_options = body.get("stream_options")
    include_usage = False
    if stream_options is not None:
        if not stream:
            raise invalid_request(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.", "stream_options"
            )
        if not isinstance(stream_options, dict):
            raise invalid_request("Invalid type for 'stream_options': expected an object.", "stream_options")
        include_usage = stream_options.get("include_usage") is True
        continuous_usage = continuous_usage or stream_options.get("continuous_usage_stats") is True
    return stream, include_usage, continuous_usage
