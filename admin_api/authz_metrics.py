"""Refusals by code as authz counts them: `dynaseal_authz_decisions_total{result="deny"}` from each authz's
/metrics. Refused requests never reach the usage topic (the shipper sends admitted requests only), so
these counters are where every refusal code is seen; they count since each authz process started."""

from __future__ import annotations

from collections import Counter
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

DECISIONS = "dynaseal_authz_decisions_total"
TIMEOUT_S = 2.0


def _count(text: str, into: Counter[str]) -> None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            # A fail-closed 503 is a decision too, code `authz_unavailable` (its reason is another counter's label).
            if sample.name == DECISIONS and sample.labels.get("result") == "deny":
                into[sample.labels.get("code", "")] += int(sample.value)


async def refusal_counts(urls: tuple[str, ...]) -> dict[str, Any]:
    """Summed over every authz that answered; the ones that did not are listed (never an error)."""
    counts: Counter[str] = Counter()
    unreachable: list[str] = []
    async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
        for url in urls:
            try:
                reply = await client.get(url)
                reply.raise_for_status()
                _count(reply.text, counts)
            except (httpx.HTTPError, ValueError):
                unreachable.append(url)
    codes = [{"code": code, "count": count} for code, count in sorted(counts.items()) if count]
    return {"source": "authz_metrics", "codes": codes, "unreachable": unreachable}
