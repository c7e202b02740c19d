"""The reservation: an upper bound of the tokens a request can cost, and which budgets it protects.

    prompt bound     = ceil(len(body) × template_factor) + 32 + template_tokens + media parts × media_part_tokens
    completion bound = n × (max_tokens + reasoning_tokens)

A byte-level tokenizer (every OpenAI model's, and most others') never makes more tokens than the
UTF-8 bytes it reads, and every message, tool, tool call and schema the provider turns into prompt
tokens is inside the body; 32 covers the reply's priming tokens and chat framing. What the body's
bytes do not bound is configured per model (`limits.model_allowances`): a chat template that
re-serialises tools with indentation (a factor and a constant), reasoning a model generates outside
`max_tokens` (DeepSeek's `deepseek-reasoner`). Image, audio and file parts cost hundreds of tokens
in a few bytes: each reserves `limits.media_part_tokens`, or is refused when a budget applies.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from dynaseal.errors import ErrorCode, Refusal
from dynaseal.tenant_config import Limits, ModelAllowance

if TYPE_CHECKING:  # the registry imports this module at load time; claims imports the registry
    from dynaseal.keys.claims import VerifiedKey

PROMPT_OVERHEAD_TOKENS = 32
# Content parts whose bytes bound their tokens; any other part type is media (or unknown) and
# reserves media_part_tokens.
TEXT_PART_TYPES = frozenset({"text", "refusal"})
NO_ALLOWANCE = ModelAllowance()


def allowance_for(limits: Limits, model: str) -> ModelAllowance:
    """The model's allowances: its own entry, else the tenant's `"*"` entry, else none."""
    allowances = limits.model_allowances
    if not allowances:
        return NO_ALLOWANCE
    return allowances.get(model) or allowances.get("*") or NO_ALLOWANCE


def media_parts(messages: list[Any]) -> int:
    """Parts of the prompt whose cost their bytes do not bound (images, audio, files, unknown)."""
    count = 0
    for message in messages:
        if not isinstance(message, dict):
            raise Refusal(ErrorCode.INVALID_REQUEST, "each message must be an object", "messages")
        if message.get("audio") is not None:  # an earlier audio reply, referenced by id
            count += 1
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                if not isinstance(part, dict) or part.get("type") not in TEXT_PART_TYPES:
                    count += 1
        elif content is not None and not isinstance(content, str):
            raise Refusal(ErrorCode.INVALID_REQUEST, "message content must be a string or an array of parts",
                          "messages")
    return count


def budget_applies(key: VerifiedKey) -> bool:
    """Whether any budget can be spent by this request: a token or money budget of the key or any key
    above it, or the tenant's own (its per-key defaults are already in the key's values)."""
    limits = key.tenant.limits
    if limits.tenant_budget is not None or limits.budget is not None or limits.budget_cost is not None:
        return True
    node: VerifiedKey | None = key
    while node is not None:
        if node.budget is not None or node.budget_cost is not None:
            return True
        node = node.parent
    return False


def prompt_bound(body_size: int, messages: list[Any], key: VerifiedKey,
                 allowance: ModelAllowance = NO_ALLOWANCE) -> int:
    """An upper bound of the request's prompt tokens, or Refusal when none can be given."""
    media = media_parts(messages)
    factor = allowance.template_factor
    scaled = body_size if factor == 1 else math.ceil(body_size * factor)
    bound = scaled + PROMPT_OVERHEAD_TOKENS + allowance.template_tokens
    if media:
        per_part = key.tenant.limits.media_part_tokens
        if per_part is None:
            if budget_applies(key):
                raise Refusal(ErrorCode.PARAM_NOT_ALLOWED,
                              "a token or money budget applies and images, audio or files have no bounded cost "
                              "here (the tenant sets no media_part_tokens): send text parts only", "messages")
            per_part = 0  # no budget to protect; the real usage is still billed
        bound += media * per_part
    return bound
