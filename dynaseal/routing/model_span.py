"""Where the top-level `model` member's value sits in the raw body, to the byte.

The physical-model rewrite splices a new value into exactly these bytes (in Envoy, per try), so
what the upstream receives is the body authz checked with that one value changed: no second
`model` member, no re-serialisation. The body has already been parsed as a JSON object without
duplicate members (request_policy), so this scanner only has to find, not to validate.
"""

from __future__ import annotations

import json
import re

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NESTED_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)
_SCALAR = re.compile(rb"[^,}\]\s]*")
_WS = re.compile(rb"[ \t\n\r]*")


def _skip_ws(raw: bytes, pos: int) -> int:
    match = _WS.match(raw, pos)
    return match.end() if match else pos


def _end_of_string(raw: bytes, pos: int) -> int:
    match = _STRING.match(raw, pos)
    if match is None:
        raise ValueError("unterminated string")
    return match.end()


def _end_of_value(raw: bytes, pos: int) -> int:
    opener = raw[pos:pos + 1]
    if opener == b'"':
        return _end_of_string(raw, pos)
    if opener in (b"{", b"["):
        depth = 0
        for token in _NESTED_TOKEN.finditer(raw, pos):
            first = token.group()[:1]
            if first in (b"{", b"["):
                depth += 1
            elif first in (b"}", b"]"):
                depth -= 1
                if depth == 0:
                    return token.end()
        raise ValueError("unbalanced value")
    match = _SCALAR.match(raw, pos)
    assert match is not None  # `*` always matches
    return match.end()


def model_value_span(raw: bytes) -> tuple[int, int] | None:
    """(offset, length) in bytes of the top-level `model` value (its quotes included), None if absent.

    Member names are compared decoded, so `"mod\\u0065l"` is the model member too (as every JSON
    parser, the provider's included, reads it).
    """
    pos = _skip_ws(raw, 0)
    if raw[pos:pos + 1] != b"{":
        raise ValueError("not a JSON object")
    pos += 1
    while True:
        pos = _skip_ws(raw, pos)
        if raw[pos:pos + 1] == b"}":
            return None
        key_end = _end_of_string(raw, pos)
        name = json.loads(raw[pos:key_end])
        pos = _skip_ws(raw, key_end)
        if raw[pos:pos + 1] != b":":
            raise ValueError("member without ':'")
        start = _skip_ws(raw, pos + 1)
        end = _end_of_value(raw, start)
        if name == "model":
            return start, end - start
        pos = _skip_ws(raw, end)
        if raw[pos:pos + 1] == b",":
            pos += 1
        elif raw[pos:pos + 1] == b"}":
            return None
        else:
            raise ValueError("expected ',' or '}'")
