"""The authorizer's content step: a key's tenant rules against the request's text, and the refusal's decision."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import orjson

from dynaseal.content.fields import EXTRACTORS
from dynaseal.content.rules import CompiledRules, ContentBlocked
from dynaseal.keys.claims import VerifiedKey
from dynaseal.policy.decision import Decision, deny_from

__all__ = ["ContentBlocked", "blocked_decision", "check_content"]


def check_content(key: VerifiedKey, body: Mapping[str, Any], api: str = "chat") -> None:
    """Raise ContentBlocked when one of the tenant's content rules matches the body's text (`api`: its format)."""
    rules: CompiledRules = key.tenant.limits.content_rules.compiled
    if rules:
        try:
            rules.check(EXTRACTORS[api](body))
        except ContentBlocked as blocked:
            model = body.get("model")
            blocked.model = model if isinstance(model, str) else ""
            raise


def blocked_decision(blocked: ContentBlocked, key: VerifiedKey | None, request_id: str) -> Decision:
    """The 400 content_blocked decision. Its metadata, logged by Envoy, names the rule and what the tenant's
    `content_blocked` callback needs to say whose request it was (dynaseal.usage.blocked); never the text."""
    decision = deny_from(blocked, key.jti if key else None, request_id)
    metadata: dict[str, str | int | float | bool] = {"content_rule": blocked.rule}
    if key is not None:
        metadata.update(tenant=key.tenant.id, event_id=key.event_id, model=blocked.model)
        if key.sub is not None:
            metadata["sub"] = key.sub
        if key.cb is not None:
            metadata["cb"] = orjson.dumps(key.cb).decode()
    return replace(decision, metadata=metadata)
