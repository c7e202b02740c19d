"""The answer's text in Responses and Messages bodies and events, for callbacks with `include_content`.

Chat's shapes are read in `dynaseal.usage.events`; these are the others: a Responses body's
`output[].content[].text` (type `output_text`) and its `response.output_text.delta` events; a Messages
body's `content[].text` and its `content_block_delta` `text_delta` events.
"""

from __future__ import annotations

from typing import Any


def json_answer(reply: dict[str, Any]) -> str | None:
    """The text of a Responses or Messages body, or None when it is neither."""
    if reply.get("object") == "response" and isinstance(reply.get("output"), list):
        return "".join(part["text"] for item in reply["output"] if isinstance(item, dict)
                       for part in item.get("content") or () if isinstance(part, dict)
                       and part.get("type") == "output_text" and isinstance(part.get("text"), str))
    if reply.get("type") == "message" and isinstance(reply.get("content"), list):
        return "".join(block["text"] for block in reply["content"] if isinstance(block, dict)
                       and block.get("type") == "text" and isinstance(block.get("text"), str))
    return None


def event_text(event: dict[str, Any]) -> str:
    """The text one Responses or Messages stream event adds ("" for any other event)."""
    kind = event.get("type")
    if kind == "response.output_text.delta" and isinstance(event.get("delta"), str):
        return str(event["delta"])
    if kind == "content_block_delta":
        delta = event.get("delta")
        if isinstance(delta, dict) and delta.get("type") == "text_delta" and isinstance(delta.get("text"), str):
            return str(delta["text"])
    return ""
