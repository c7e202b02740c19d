"""Documents (chat `file`, Responses `input_file`, Messages `document`) under a budget: each reserves the
tenant's document_part_tokens, or is refused when it sets none — one image's allowance never bounds a PDF."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import Any

import pytest
from conftest import acme_tenant

from dynaseal.config import DynasealConfig
from dynaseal.errors import ErrorCode, Refusal
from dynaseal.keys.claims import VerifiedKey
from dynaseal.keys.tenants import Tenant
from dynaseal.policy.documents import count_documents
from dynaseal.policy.endpoints.messages import check_messages
from dynaseal.policy.endpoints.responses import check_responses
from dynaseal.policy.request_policy import check_request
from dynaseal.tenant_config import Limits

PDF = {"type": "file", "file": {"file_id": "file-abc"}}
CHAT = {"model": "gpt-4o-mini", "max_tokens": 10, "messages": [{"role": "user", "content": [
    {"type": "text", "text": "summarise"}, PDF]}]}
RESPONSES = {"model": "gpt-4o-mini", "max_output_tokens": 10, "input": [{"role": "user", "content": [
    {"type": "input_text", "text": "summarise"}, {"type": "input_file", "file_url": "https://example.com/a.pdf"}]}]}
# A document nested in a tool result: found at any depth.
MESSAGES = {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [
    {"role": "user", "content": "read it"},
    {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "fetch", "input": {}}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [
        {"type": "document", "source": {"type": "url", "url": "https://example.com/a.pdf"}}]}]}]}
CHECKS: dict[str, tuple[Any, dict[str, Any]]] = {
    "chat": (check_request, CHAT), "responses": (check_responses, RESPONSES), "messages": (check_messages, MESSAGES)}


@pytest.fixture(scope="module")
def base(cfg: DynasealConfig) -> Tenant:
    return acme_tenant(cfg)


def key(base: Tenant, budget: int | None, **limits: Any) -> VerifiedKey:
    tenant = replace(base, limits=Limits(models=("*",), max_tokens=4096, media_part_tokens=1000, **limits))
    return VerifiedKey(tenant=tenant, jti=f"k-{uuid.uuid4().hex}", exp=time.time() + 600, event_id="e", sub=None,
                       models=None, budget=budget, uses=None, rpm=None, max_tokens=1000)


@pytest.mark.parametrize("api", sorted(CHECKS))
def test_a_document_under_a_budget_without_a_document_price_is_refused(base: Tenant, api: str) -> None:
    check, body = CHECKS[api]
    with pytest.raises(Refusal) as refused:
        check(body, key(base, budget=100_000), 2000)
    assert refused.value.code == ErrorCode.PARAM_NOT_ALLOWED and "document_part_tokens" in refused.value.message


@pytest.mark.parametrize("api", sorted(CHECKS))
def test_a_document_reserves_its_price_beyond_the_media_allowance(base: Tenant, api: str) -> None:
    check, body = CHECKS[api]
    with_price = check(body, key(base, budget=1_000_000, document_part_tokens=50_000), 2000)
    without_budget = check(body, key(base, budget=None), 2000)  # no budget: served, nothing extra reserved
    assert with_price.prompt_bound - without_budget.prompt_bound == 49_000  # 50,000 in all with the media 1,000


def test_only_document_parts_count_and_a_tool_calls_input_is_not_content() -> None:
    assert count_documents(CHAT["messages"]) == 1
    assert count_documents(MESSAGES["messages"]) == 1
    assert count_documents([{"type": "tool_use", "input": {"type": "document"}}]) == 0
    assert count_documents([{"type": "text", "text": "a file"}, {"type": "image_url"}]) == 0
    deep: Any = PDF
    for _ in range(10_000):  # nesting costs no stack
        deep = [deep]
    assert count_documents(deep) == 1
