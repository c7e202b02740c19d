"""The reservation bound: media parts under every kind of budget, reasoning and template allowances, the
load-time warning for budgets without a media price."""

from __future__ import annotations

import logging
import math
import time
import uuid
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest
from conftest import OTHER_TENANT, acme_tenant
from pydantic import ValidationError

from dynaseal.config import DynasealConfig
from dynaseal.errors import ErrorCode, Refusal
from dynaseal.keys.claims import VerifiedKey
from dynaseal.keys.tenants import Tenant, build_registry
from dynaseal.money.pricing import Price
from dynaseal.policy.request_policy import PROMPT_OVERHEAD_TOKENS, CheckedRequest, check_request
from dynaseal.policy.reservation_bound import budget_applies
from dynaseal.tenant_config import Limits, TenantBudget, TenantConfig, unbounded_media_warning

IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
PRICE = Price("USD", Decimal("0.27"), Decimal("0.07"), Decimal("1.10"), Decimal("2.19"))


@pytest.fixture(scope="module")
def base(cfg: DynasealConfig) -> Tenant:
    return acme_tenant(cfg)


def tenant(base: Tenant, **limits: Any) -> Tenant:
    return replace(base, limits=Limits(models=("*",), max_tokens=4096, **limits))


def key(t: Tenant, parent: VerifiedKey | None = None, **fields: Any) -> VerifiedKey:
    values: dict[str, Any] = {"budget": None, "uses": None, "rpm": None, "max_tokens": 1000, **fields}
    return VerifiedKey(tenant=t, jti=f"k-{uuid.uuid4().hex}", exp=time.time() + 600, event_id="e", sub=None,
                       models=None, parent=parent, **values)


def media_body(parts: int = 10, **fields: Any) -> dict[str, Any]:
    content: list[Any] = [{"type": "text", "text": "what is in these?"}, *[IMAGE] * parts]
    return {"model": "deepseek-chat", "messages": [{"role": "user", "content": content}], "max_tokens": 50, **fields}


def check(body: dict[str, Any], k: VerifiedKey, size: int = 1000) -> CheckedRequest:
    return check_request(body, k, size)


# Finding 1: the tenant's budget was ignored, so a key without its own budget reserved nothing for images.
@pytest.mark.parametrize("limits", [
    {"tenant_budget": TenantBudget(tokens=5000)},
    {"budget": 5000},                      # the tenant's per-key default
    {"budget_cost": Decimal("1.00")},      # the tenant's per-key money default
], ids=["tenant_budget", "tenant_key_budget", "tenant_key_budget_cost"])
def test_media_without_a_media_price_is_refused_under_any_tenant_budget(base: Tenant, limits: dict[str, Any]) -> None:
    k = key(tenant(base, **limits))  # the key carries no budget of its own
    with pytest.raises(Refusal) as refused:
        check(media_body(), k)
    assert refused.value.code is ErrorCode.PARAM_NOT_ALLOWED and refused.value.param == "messages"
    assert "media_part_tokens" in refused.value.message


@pytest.mark.parametrize("fields", [{"budget": 100}, {"budget_cost": 1_000_000}], ids=["tokens", "money"])
def test_media_is_refused_when_a_key_above_has_a_budget(base: Tenant, fields: dict[str, Any]) -> None:
    t = tenant(base)
    parent = key(t, **fields)
    child = key(t, parent=parent, depth=1)  # the child carries none of its own
    assert budget_applies(child)
    with pytest.raises(Refusal):
        check(media_body(), child)


def test_media_reserves_its_price_under_a_tenant_budget(base: Tenant) -> None:
    k = key(tenant(base, tenant_budget=TenantBudget(tokens=5000), media_part_tokens=800))
    checked = check(media_body(10), k, size=700)
    assert checked.prompt_bound == 700 + PROMPT_OVERHEAD_TOKENS + 10 * 800
    assert checked.reservation == checked.prompt_bound + 50
    # 10 images at 800 tokens cannot fit a 5,000-token day: the ledger refuses it at admit.
    assert checked.reservation > 5000


def test_media_is_free_to_reserve_only_where_no_budget_applies(base: Tenant) -> None:
    k = key(tenant(base))
    assert not budget_applies(k)
    assert check(media_body(3), k, size=300).prompt_bound == 300 + PROMPT_OVERHEAD_TOKENS


def test_audio_file_and_unknown_parts_count_as_media(base: Tenant) -> None:
    k = key(tenant(base, media_part_tokens=100))
    messages = [
        {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
                                     {"type": "file", "file": {"file_id": "f"}}, {"type": "hologram"}, "odd"]},
        {"role": "assistant", "content": None, "audio": {"id": "audio_1"}},
    ]
    checked = check({"model": "m", "messages": messages, "max_tokens": 5}, k, size=10)
    assert checked.prompt_bound == 10 + PROMPT_OVERHEAD_TOKENS + 5 * 100


# Reasoning and template allowances: the bound's formula, exactly.
def test_model_allowances_enter_the_bound_and_its_price(base: Tenant) -> None:
    t = replace(tenant(base, media_part_tokens=100, model_allowances={
        "deepseek-reasoner": {"reasoning_tokens": 32768, "template_factor": 1.25, "template_tokens": 64}}),
        prices={"deepseek-reasoner": PRICE})
    body = media_body(2, model="deepseek-reasoner", n=2)
    checked = check(body, key(t), size=1001)
    prompt = math.ceil(1001 * 1.25) + PROMPT_OVERHEAD_TOKENS + 64 + 2 * 100
    assert checked.prompt_bound == prompt
    assert checked.completion_bound == 2 * (50 + 32768)
    assert checked.reservation == prompt + 2 * (50 + 32768)
    # Money uses the same bound: each side at its dearest line.
    assert checked.reservation_cost == PRICE.bound_micros(prompt, 2 * (50 + 32768))
    assert checked.reservation_cost == math.ceil(prompt * 0.27 + 2 * (50 + 32768) * 2.19)


def test_the_star_allowance_covers_models_without_their_own(base: Tenant) -> None:
    t = tenant(base, model_allowances={"*": {"reasoning_tokens": 1000}, "deepseek-chat": {}})
    assert check(media_body(0, model="other"), key(t), 10).reasoning_tokens == 1000
    assert check(media_body(0), key(t), 10).reasoning_tokens == 0  # its own entry wins
    assert check(media_body(0), key(tenant(base)), 10).reservation == 10 + PROMPT_OVERHEAD_TOKENS + 50


@pytest.mark.parametrize("allowance", [{"template_factor": 0.5}, {"reasoning_tokens": -1}, {"template_tokens": -3},
                                       {"reasoning": 5}, {"template_factor": 100}])
def test_bad_allowances_are_config_errors(allowance: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Limits(model_allowances={"m": allowance})


# The load-time warning: a tenant with a budget and no media price refuses every media request.
def test_a_budget_without_a_media_price_warns_at_load_naming_the_tenant(
        cfg: DynasealConfig, caplog: pytest.LogCaptureFixture) -> None:
    from dynaseal.keys.signing_keystore import SigningKeyStore

    SigningKeyStore(cfg.data_path / "issuer").ensure()
    raw = cfg.model_dump()
    acme = next(t for t in raw["tenants"] if t["id"] == OTHER_TENANT)
    acme["limits"]["tenant_budget"] = {"tokens": 5000, "window": "day"}
    with caplog.at_level(logging.WARNING, logger="dynaseal.config"):
        build_registry(DynasealConfig.model_validate(raw))
    warnings = [r.getMessage() for r in caplog.records if r.name == "dynaseal.config"]
    assert any(f"tenant {OTHER_TENANT}:" in w and "tenant_budget" in w and "refused" in w for w in warnings)


def test_no_warning_with_a_media_price_or_without_budgets() -> None:
    keys = [{"alg": "HS256", "secret_env": "X"}]
    assert unbounded_media_warning(TenantConfig(id="t", keys=keys, limits=Limits(budget=10))) is not None
    assert unbounded_media_warning(TenantConfig(id="t", keys=keys, limits=Limits(budget=10, media_part_tokens=0))) \
        is None
    assert unbounded_media_warning(TenantConfig(id="t", keys=keys)) is None
