"""Documents in a prompt: files and PDFs whose tokens neither their bytes nor one image's allowance bound.

A document part (chat `file`, Responses `input_file`, Messages `document`, at any depth — a web fetch
result or a tool result may carry one) can be a URL or a file id that expands to hundreds of pages. Where
a budget applies, each reserves the tenant's `limits.document_part_tokens` (on top of what it already
reserves as a media part), or the request is refused when the tenant sets none: a budget is never
overspent through a document.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dynaseal.errors import ErrorCode, Refusal
from dynaseal.policy.reservation_bound import budget_applies

if TYPE_CHECKING:
    from dynaseal.keys.claims import VerifiedKey

DOCUMENT_TYPES = frozenset({"file", "input_file", "document"})


def count_documents(value: Any) -> int:
    """Document parts anywhere in `value` (iterative: deep nesting costs no stack); a tool call's own
    `input` is the model's JSON, not content, and is not looked into."""
    count = 0
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            kind = node.get("type")
            if isinstance(kind, str) and kind in DOCUMENT_TYPES:
                count += 1
            stack.extend(v for k, v in node.items() if not (k == "input" and kind == "tool_use"))
        elif isinstance(node, list):
            stack.extend(node)
    return count


def document_tokens(key: VerifiedKey, documents: int, param: str) -> int:
    """What `documents` add to the prompt bound beyond their media allowance; Refusal where none bounds them."""
    if not documents:
        return 0
    limits = key.tenant.limits
    if limits.document_part_tokens is None:
        if budget_applies(key):
            raise Refusal(ErrorCode.PARAM_NOT_ALLOWED,
                          "this key has a budget and documents (files, PDFs) have no bounded cost here (the tenant "
                          "sets no document_part_tokens): send their text instead", param)
        return 0  # no budget to protect; the real usage is still billed
    return documents * max(0, limits.document_part_tokens - (limits.media_part_tokens or 0))
