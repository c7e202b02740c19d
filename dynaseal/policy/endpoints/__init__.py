"""The endpoints beside chat completions, by path: each its format (the upstreams that speak it), its
policy, its error shape and whether it is metered.

A format name is what an upstream declares it speaks (`formats:`); the gateway never translates
between formats.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from dynaseal.keys.claims import VerifiedKey
from dynaseal.policy.endpoints.embeddings import check_embeddings
from dynaseal.policy.endpoints.messages import check_count_tokens, check_messages
from dynaseal.policy.endpoints.responses import check_responses
from dynaseal.policy.request_policy import CheckedRequest

Checker = Callable[[dict[str, Any], VerifiedKey, int], CheckedRequest]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One API the gateway serves beside chat completions."""

    name: str  # the usage record's `endpoint`
    format: Literal["responses", "messages", "embeddings"]  # what its upstream must speak
    content_api: str  # dynaseal.content.fields.EXTRACTORS
    check: Checker
    metered: bool = True  # False: nothing generated, nothing reserved, no usage event
    errors: Literal["openai", "anthropic"] = "openai"


RESPONSES = Endpoint("responses", "responses", "responses", check_responses)
MESSAGES = Endpoint("messages", "messages", "messages", check_messages, errors="anthropic")
COUNT_TOKENS = Endpoint("messages_count_tokens", "messages", "messages", check_count_tokens, metered=False,
                        errors="anthropic")
EMBEDDINGS = Endpoint("embeddings", "embeddings", "embeddings", check_embeddings)

PATHS: Mapping[str, Endpoint] = {
    f"{prefix}/{path}": endpoint
    for prefix in ("/v1", "/api/v1")
    for path, endpoint in (("responses", RESPONSES), ("messages", MESSAGES),
                           ("messages/count_tokens", COUNT_TOKENS), ("embeddings", EMBEDDINGS))
}


def endpoint_of(path: str) -> Endpoint | None:
    """The endpoint served at `path` (its query string ignored: refused later), or None (chat completions)."""
    return PATHS.get(path.split("?", 1)[0])
