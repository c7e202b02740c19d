"""`GET /admin/v1/usage` and `/refusals`: what each tenant, key and model used and cost, per time bucket,
and the requests refused, by code."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from starlette.concurrency import run_in_threadpool

from admin_api.auth import require_admin
from admin_api.authz_metrics import refusal_counts
from admin_api.console_context import ConsoleContext, console_context
from dynaseal.usage_store.queries import BUCKETS, GROUPS, UsageFilter, refusals_by_code, usage_series, usage_totals

router = APIRouter(dependencies=[Depends(require_admin)], tags=["usage"])
Context = Annotated[ConsoleContext, Depends(console_context)]
Id = Annotated[str | None, Query(min_length=1, max_length=128)]
# How far back a query reaches when it names no start: a chart's worth of buckets.
DEFAULT_SPAN_S = {"minute": 2 * 3600, "hour": 2 * 86400, "day": 30 * 86400}
MAX_BUCKETS = 5_000


def _window(since: datetime | None, until: datetime | None, bucket: str) -> tuple[int, int]:
    """The [since, until) range in seconds; 400 when it is backwards or holds too many buckets."""
    try:
        end = int((until or datetime.now(UTC)).timestamp())
        start = int(since.timestamp()) if since is not None else end - DEFAULT_SPAN_S[bucket]
    except (ValueError, OverflowError, OSError):  # a naive date near year 1 or 9999 has no epoch time here
        raise HTTPException(400, "`since` and `until` must be dates between 1970 and 9999") from None
    if start >= end:
        raise HTTPException(400, "`since` must be before `until`")
    if (end - start) // BUCKETS[bucket] > MAX_BUCKETS:
        raise HTTPException(400, f"at most {MAX_BUCKETS} buckets per query: a larger bucket or a shorter range")
    return start, end


def _groups(group_by: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in group_by.split(",") if name.strip())
    if not names or len(set(names)) != len(names) or any(name not in GROUPS for name in names):
        raise HTTPException(400, f"group_by: a comma-separated subset of {', '.join(GROUPS)}")
    return names


@router.get("/usage")
async def get_usage(context: Context, bucket: Literal["minute", "hour", "day"] = "hour",
                    since: datetime | None = None, until: datetime | None = None, tenant: Id = None,
                    key_id: Id = None, model: Id = None, group_by: Annotated[str, Query(max_length=64)] = "tenant,model"
                    ) -> dict[str, Any]:
    """Requests, tokens and cost per bucket and group (tenant, key, model), and the totals per tenant."""
    start, end = _window(since, until, bucket)
    where = UsageFilter(start, end, tenant, key_id, model)
    groups = _groups(group_by)
    series = await run_in_threadpool(usage_series, context.engine, where, bucket, groups)
    totals = await run_in_threadpool(usage_totals, context.engine, where)
    return {"bucket": bucket, "since": _iso(start), "until": _iso(end), "group_by": list(groups),
            "series": series, "totals": totals}


@router.get("/refusals")
async def get_refusals(context: Context, since: datetime | None = None, until: datetime | None = None,
                       tenant: Id = None) -> dict[str, Any]:
    """Refused requests by code: authz's decisions (every code, since each authz started) and content-rule
    refusals per tenant from the usage store (the only refusals that reach the usage topic)."""
    start, end = _window(since, until, "day")
    authz, stored = await asyncio.gather(
        refusal_counts(context.authz_metrics_urls),
        run_in_threadpool(refusals_by_code, context.engine, UsageFilter(start, end, tenant)))
    return {"authz": authz, "content_rules": stored, "since": _iso(start), "until": _iso(end),
            "read_at": _iso(int(time.time()))}


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")
