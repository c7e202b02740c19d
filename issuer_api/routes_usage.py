"""`GET /usage`: received callbacks, newest first, as the caller may see them, with per-key totals.

The tenant account sees all of the tenant's usage; an end user sees the callbacks of keys they
minted, and of keys minted for them (`sub` = their username) by the tenant account.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlalchemy import ColumnElement, func, or_, select, true

from dynaseal.money.pricing import money
from issuer_api.deps import AccountDep, StateDep
from issuer_api.errors import invalid_request
from issuer_api.store import Callback, MintedKey, as_utc
from issuer_api.users import Account

router = APIRouter(tags=["usage"])
MAX_LIMIT = 100


class Money(BaseModel):
    """An exact amount (a decimal string) in a currency."""

    amount: str
    currency: str


class UsageItem(BaseModel):
    """One stored callback."""

    webhook_id: str
    event_id: str | None
    jti: str | None
    sub: str | None
    tokens: int
    usage: dict[str, Any] | None
    content: str | None
    model: str | None
    received_at: datetime | None
    cost: Money | None = None


class KeyTotal(BaseModel):
    """What one key spent across every callback the caller may see."""

    jti: str
    requests: int
    tokens: int
    # The sum of the key's priced callbacks; null when none was priced (or they mix currencies).
    cost: Money | None = None


class UsagePage(BaseModel):
    """A page of callbacks; pass `next_cursor` back as `cursor` for the next (older) page."""

    items: list[UsageItem]
    totals: list[KeyTotal]
    next_cursor: str | None


def _visible_to(account: Account) -> ColumnElement[bool]:
    if account.is_tenant:
        return true()  # one issuer serves one tenant: every stored callback is the tenant's
    own_keys = select(MintedKey.jti).where(MintedKey.user_id == account.id)
    return or_(Callback.jti.in_(own_keys), Callback.sub == account.username)


def _cursor_id(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    if not cursor.isdigit() or len(cursor) > 18:
        raise invalid_request("cursor is not a value returned as next_cursor", "cursor")
    return int(cursor)


def _item(row: Callback) -> dict[str, Any]:
    model = row.payload.get("model") if isinstance(row.payload, dict) else None
    return {"webhook_id": row.webhook_id, "event_id": row.event_id, "jti": row.jti, "sub": row.sub,
            "tokens": row.tokens, "usage": row.usage, "content": row.content,
            "model": model if isinstance(model, str) else None, "received_at": as_utc(row.received_at),
            "cost": {"amount": row.cost_amount, "currency": row.cost_currency}
            if row.cost_amount is not None and row.cost_currency is not None else None}


def _total_cost(by_currency: dict[str, Decimal]) -> dict[str, str] | None:
    if len(by_currency) != 1:
        return None
    ((currency, amount),) = by_currency.items()
    return money(amount, currency)


@router.get("/usage", response_model=UsagePage, summary="Usage reported by the gateway, newest first")
def usage(
    state: StateDep,
    account: AccountDep,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
    cursor: Annotated[str | None, Query(max_length=32)] = None,
    jti: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
) -> dict[str, Any]:
    """One page of the callbacks the caller may see, with totals for the keys on the page."""
    before = _cursor_id(cursor)
    visible = _visible_to(account)
    query = select(Callback).where(visible)
    if jti is not None:
        query = query.where(Callback.jti == jti)
    if before is not None:
        query = query.where(Callback.id < before)
    with state.sessions() as db:
        rows = list(db.scalars(query.order_by(Callback.id.desc()).limit(limit + 1)))
        page, more = rows[:limit], len(rows) > limit
        page_jtis = sorted({r.jti for r in page if r.jti is not None})
        totals = db.execute(
            select(Callback.jti, func.count(Callback.id), func.coalesce(func.sum(Callback.tokens), 0))
            .where(visible, Callback.jti.in_(page_jtis)).group_by(Callback.jti).order_by(Callback.jti)
        ).all() if page_jtis else []
        # Decimal sums in Python: the amounts are exact strings, and SQLite has no exact decimal type.
        costs: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
        if page_jtis:
            for jti_, amount, currency in db.execute(
                    select(Callback.jti, Callback.cost_amount, Callback.cost_currency)
                    .where(visible, Callback.jti.in_(page_jtis), Callback.cost_amount.is_not(None))):
                if jti_ is not None and amount is not None and currency is not None:
                    costs[jti_][currency] += Decimal(amount)
    return {
        "items": [_item(r) for r in page],
        "totals": [{"jti": t[0], "requests": t[1], "tokens": t[2],
                    "cost": _total_cost(costs.get(t[0] or "", {}))} for t in totals],
        "next_cursor": str(page[-1].id) if more else None,
    }
