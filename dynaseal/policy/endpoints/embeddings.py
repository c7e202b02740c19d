"""OpenAI's embeddings API (`POST /v1/embeddings`): the key's policy and a true reservation bound.

Embeddings generate no output tokens; the prompt bound counts each input: a string by its UTF-8
bytes (a byte-level tokenizer never makes more tokens than bytes), a token-id array by its length,
plus 32 for the request.
"""

from __future__ import annotations

from typing import Any

from dynaseal.keys.claims import VerifiedKey
from dynaseal.policy.endpoints.common import (
    check_end_user,
    check_key_params,
    check_known,
    check_model,
    invalid,
    price_of,
)
from dynaseal.policy.request_policy import CheckedRequest
from dynaseal.policy.reservation_bound import PROMPT_OVERHEAD_TOKENS

CORE = frozenset({"model", "input", "encoding_format", "dimensions", "user"})
MAX_INPUTS = 2048


def _is_ids(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)


def input_tokens(raw: Any) -> int:
    """An upper bound of the tokens of `input`: bytes of each string, length of each token-id array."""
    if isinstance(raw, str):
        return len(raw.encode())
    if isinstance(raw, list) and raw and _is_ids(raw):
        return len(raw)
    if not isinstance(raw, list) or not raw:
        raise invalid("'input' must be a string, an array of strings or of token arrays (non-empty)", "input")
    if len(raw) > MAX_INPUTS:
        raise invalid(f"'input' may hold at most {MAX_INPUTS} inputs", "input")
    total = 0
    for item in raw:
        if isinstance(item, str):
            total += len(item.encode())
        elif _is_ids(item):
            total += len(item)
        else:
            raise invalid("each input must be a string or an array of token ids", "input")
    return total


def check_embeddings(body: dict[str, Any], key: VerifiedKey, body_size: int) -> CheckedRequest:
    """Enforce the key's policy on an embeddings body."""
    check_known(body, key, "embeddings")
    model = check_model(body, key)
    bound = input_tokens(body.get("input")) + PROMPT_OVERHEAD_TOKENS
    if body.get("encoding_format") not in (None, "float", "base64"):
        raise invalid("'encoding_format' must be float or base64", "encoding_format")
    check_end_user(body, key, ("user",))
    check_key_params(body, key, CORE)
    return CheckedRequest(model, False, 1, 0, bound, "", False, price_of(key, model))
