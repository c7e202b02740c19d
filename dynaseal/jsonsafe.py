"""Strict JSON parsing for untrusted bytes: duplicate keys, non-finite numbers and lone surrogates are refused.

A duplicate `model` key is a classic smuggling trick: one parser reads the first, another
the last. Refusing duplicates means every component sees the same request.
"""

from __future__ import annotations

import json
import re
from typing import Any

# A JSON escape of a UTF-16 surrogate (either half): only a body with one needs the full check.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class DuplicateKeyError(ValueError):
    """The JSON text has an object with the same key twice."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise DuplicateKeyError(f"duplicate key {dup!r}")
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constant)


class LoneSurrogateError(ValueError):
    """The JSON text escapes half a UTF-16 surrogate pair (`"\\ud800"`): valid syntax, but no Unicode text."""


def loads_strict(data: bytes | str) -> Any:
    """Parse JSON, refusing duplicate keys, NaN/Infinity, invalid UTF-8 and lone surrogates (ValueError).

    A lone surrogate cannot be encoded again (UTF-8, orjson, protobuf all refuse it): a value holding
    one would fail wherever it is quoted, logged or forwarded, so it is refused here, at the edge.
    """
    if isinstance(data, bytes | bytearray):
        raw, text = bytes(data), data.decode("utf-8")
    else:
        raw, text = data.encode("utf-8"), data  # a raw lone surrogate in a str fails this encode
    value = _DECODER.decode(text)
    if has_lone_surrogate(raw, value):
        raise LoneSurrogateError("lone UTF-16 surrogate escape (\\ud800-\\udfff)")
    return value


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def has_lone_surrogate(raw: bytes, parsed: Any) -> bool:
    """Whether a parsed JSON value holds a string with a lone surrogate (from a `\\ud800` escape).

    Escaped surrogate *pairs* (how `ensure_ascii` encoders write emoji) decode to one character and
    pass. The walk runs only when the raw bytes contain a surrogate escape, so ordinary bodies pay
    one regex scan.
    """
    # A one-byte `in` is memchr (~0.5 µs for 32 KB): a body without any escape skips the regex (~20 µs).
    if b"\\" not in raw or _SURROGATE_ESCAPE.search(raw) is None:
        return False
    stack = [parsed]
    while stack:  # iterative: the parser already bounded the depth, the walk need not recurse
        value = stack.pop()
        if isinstance(value, str):
            if not _is_unicode(value):
                return True
        elif isinstance(value, dict):
            for name, member in value.items():
                if not _is_unicode(name):
                    return True
                stack.append(member)
        elif isinstance(value, list):
            stack.extend(value)
    return False
