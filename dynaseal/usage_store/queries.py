"""Reading the store: requests, tokens and cost per time bucket, grouped by tenant, key and model."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, Engine, func, select

from dynaseal.money.pricing import format_amount
from dynaseal.usage_store.rows import NANOS, REFUSAL, USAGE
from dynaseal.usage_store.schema import usage_requests as t

BUCKETS = {"minute": 60, "hour": 3600, "day": 86400}
GROUPS = {"tenant": t.c.tenant, "key": t.c.key_id, "model": t.c.model}
MAX_ROWS = 10_000


@dataclass(frozen=True)
class UsageFilter:
    """Which requests to count: a time range (seconds since the epoch, end excluded) and optional ids."""

    since_s: int
    until_s: int
    tenant: str | None = None
    key_id: str | None = None
    model: str | None = None

    def where(self, kind: str) -> list[ColumnElement[bool]]:
        """The SQL conditions of this filter for rows of one kind."""
        conditions = [t.c.kind == kind, t.c.started_s >= self.since_s, t.c.started_s < self.until_s]
        if self.tenant is not None:
            conditions.append(t.c.tenant == self.tenant)
        if self.key_id is not None:
            # A root key's bill includes the child keys minted under it.
            conditions.append((t.c.key_id == self.key_id) | (t.c.root_key_id == self.key_id))
        if self.model is not None:
            conditions.append(t.c.model == self.model)
        return conditions


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def _money(nanos: int, currency: str) -> dict[str, str] | None:
    """The `{"amount", "currency"}` of a sum; None for unpriced requests (no currency)."""
    if not currency:
        return None
    return {"amount": format_amount(Decimal(nanos).scaleb(-NANOS)), "currency": currency}


def usage_series(engine: Engine, where: UsageFilter, bucket: str, group_by: tuple[str, ...]) -> list[dict[str, Any]]:
    """One row per (bucket, group, currency): requests, tokens and cost, oldest bucket first."""
    size = BUCKETS[bucket]
    start = ((t.c.started_s // size) * size).label("bucket")
    groups = [GROUPS[name].label(name) for name in group_by]
    statement = (select(start, *groups, t.c.currency, func.count().label("requests"),
                        func.sum(t.c.prompt_tokens).label("prompt_tokens"),
                        func.sum(t.c.completion_tokens).label("completion_tokens"),
                        func.sum(t.c.total_tokens).label("total_tokens"),
                        func.sum(t.c.cost_nanos).label("cost_nanos"))
                 .where(*where.where(USAGE))
                 .group_by(start, *groups, t.c.currency)
                 .order_by(start, *groups, t.c.currency)
                 .limit(MAX_ROWS))
    with engine.connect() as connection:
        rows = connection.execute(statement).mappings().all()
    return [{"bucket": _iso(int(row["bucket"])), **{name: row[name] for name in group_by},
             "requests": int(row["requests"]), "prompt_tokens": int(row["prompt_tokens"] or 0),
             "completion_tokens": int(row["completion_tokens"] or 0), "total_tokens": int(row["total_tokens"] or 0),
             "cost": _money(int(row["cost_nanos"] or 0), row["currency"])} for row in rows]


def usage_totals(engine: Engine, where: UsageFilter) -> list[dict[str, Any]]:
    """Per tenant and currency over the whole range: what the operator bills."""
    statement = (select(t.c.tenant, t.c.currency, func.count().label("requests"),
                        func.sum(t.c.total_tokens).label("total_tokens"),
                        func.sum(t.c.cost_nanos).label("cost_nanos"))
                 .where(*where.where(USAGE)).group_by(t.c.tenant, t.c.currency).order_by(t.c.tenant, t.c.currency))
    with engine.connect() as connection:
        rows = connection.execute(statement).mappings().all()
    return [{"tenant": row["tenant"], "requests": int(row["requests"]),
             "total_tokens": int(row["total_tokens"] or 0),
             "cost": _money(int(row["cost_nanos"] or 0), row["currency"])} for row in rows]


def refusals_by_code(engine: Engine, where: UsageFilter) -> list[dict[str, Any]]:
    """Refusals that reached the usage topic (content rules), per tenant and code."""
    statement = (select(t.c.tenant, t.c.code, func.count().label("count")).where(*where.where(REFUSAL))
                 .group_by(t.c.tenant, t.c.code).order_by(t.c.tenant, t.c.code))
    with engine.connect() as connection:
        rows = connection.execute(statement).mappings().all()
    return [{"tenant": row["tenant"], "code": row["code"], "count": int(row["count"])} for row in rows]

