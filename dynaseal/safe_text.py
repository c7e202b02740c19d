"""Client text made safe to quote: in an error message, a log line or a metric label.

A client's string may hold a lone surrogate (`"\\ud800"` is valid JSON syntax but no Unicode text:
UTF-8 encoders, orjson and protobuf refuse it), control characters that forge log lines or
terminal output, or a megabyte of anything. Every such string passes through `safe_text` before it
is quoted anywhere, so building an answer can never fail on it.
"""

from __future__ import annotations

# Enough to recognise a model name or a member; a longer one is cut and marked.
DEFAULT_LIMIT = 200
ELLIPSIS = "…"


def _escape(char: str) -> str:
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def safe_text(value: object, limit: int = DEFAULT_LIMIT) -> str:
    """`value` as printable text: non-printable characters and surrogates escaped, at most `limit` characters."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) > limit:
        text = text[:limit] + ELLIPSIS
    # The common case (printable text, no surrogates: str.isprintable is False for both Cs and Cc)
    # allocates nothing more.
    if text.isprintable():
        return text
    escaped = "".join(c if c.isprintable() else _escape(c) for c in text)
    if len(escaped) > limit:
        escaped = escaped[:limit] + ELLIPSIS
    return escaped
