"""Strict JSON parsing for untrusted bytes: duplicate keys and non-finite numbers are refused.

A duplicate `model` key is a classic smuggling trick: one parser reads the first, another
the last. Refusing duplicates means every component sees the same request.
"""

from __future__ import annotations

import json
from typing import Any


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


def loads_strict(data: bytes | str) -> Any:
    """Parse JSON, refusing duplicate keys, NaN/Infinity and invalid UTF-8 (ValueError)."""
    text = data.decode("utf-8") if isinstance(data, bytes | bytearray) else data
    return _DECODER.decode(text)
