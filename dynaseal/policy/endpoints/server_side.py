"""What a request pulls in from the provider's side, beyond its body: stored state and server tools.

Body bytes bound the prompt only when the body holds the whole prompt. A stored conversation
(`previous_response_id`, `conversation`, a stored `prompt`, `item_reference` items) adds context the
gateway never sees; a server-side tool (web search, file search, code execution, image generation,
computer use, a remote MCP server) adds fetched text and per-call fees. Each is named by a feature
name the tenant may list in `limits.server_side`; a request using any reserves the tenant's
`limits.server_side_tokens` on top of its body's bound. Tool types carry dated suffixes
(`web_search_20250305`, `web_search_preview_2025_03_11`, `computer_use_preview`): the feature is the base name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from dynaseal.errors import ErrorCode, Refusal
from dynaseal.keys.claims import VerifiedKey
from dynaseal.safe_text import safe_text

_SUFFIX = re.compile(r"(_preview)?(_\d{4}_?\d{2}_?\d{2})?$")


def feature_of(tool_type: str) -> str:
    """The feature name of a tool type: its base name without version or preview suffix."""
    return _SUFFIX.sub("", tool_type) or tool_type


def server_side_tokens(key: VerifiedKey, features: Iterable[str]) -> int:
    """The tokens to reserve for the server-side features a request uses (0 for none); Refusal for a
    feature the tenant does not allow."""
    used = False
    limits = key.tenant.limits
    for feature in features:
        if feature not in limits.server_side:
            raise Refusal(ErrorCode.PARAM_NOT_ALLOWED,
                          f"'{safe_text(feature, 64)}' runs on the provider's side or pulls in stored context the "
                          "request does not show: this tenant does not allow it (limits.server_side)", feature)
        used = True
    return (limits.server_side_tokens or 0) if used else 0
