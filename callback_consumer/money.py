"""The consumer's money side: what settlement needs beyond tokens, the cost metrics, threshold callbacks.

Threshold callbacks (`type: budget_threshold`) are sent before the usage callback of the event whose
settlement reported them, so that event's offset is committed only after they were delivered or
dead-lettered; Redis keeps each one pending until then (quota_scripts.SETTLE), and its `webhook-id`
depends on (tenant, key, budget, threshold) only. A consumer killed at any point therefore sends
each threshold again with the same id, never a second id. Two events of one key that report the same
pending threshold at once share one delivery.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from decimal import Decimal

from callback_consumer import metrics
from callback_consumer.jobs import Job, Outcome, Sender
from dynaseal.ledger.quota import MoneySettlement
from dynaseal.money.budget_thresholds import Crossing, basis_points, threshold_body, threshold_webhook_id
from dynaseal.money.pricing import TokenUsage
from dynaseal.pb import UsageEvent
from dynaseal.runtime.views import CallbackTarget
from dynaseal.usage.events import RESERVED, UPSTREAM
from dynaseal.usage.price_message import from_message

log = logging.getLogger("callback_consumer.money")
# DLQ headers of a dead-lettered threshold callback (the record's value is the event that reported it).
THRESHOLD_DLQ_TYPE = "budget_threshold"


def money_settlement(event: UsageEvent, tenant: CallbackTarget | None) -> MoneySettlement:
    """The money arguments of the event's settlement: its cost, the key's budgets, the tenant's thresholds."""
    thresholds = tenant.callback.budget_thresholds if tenant is not None and tenant.callback is not None else ()
    priced = bool(event.currency) and not event.unpriced
    return MoneySettlement(cost_micros=event.cost_micros if priced else None,
                           budget_tokens=event.budget_tokens or None, budget_cost=event.budget_cost_micros or None,
                           thresholds=basis_points(thresholds))


def record_money(event: UsageEvent) -> None:
    """Count one settled request's tokens and cost by tenant, model and token type."""
    labels = (event.tenant, event.model or "unknown")
    usage = TokenUsage(event.prompt_tokens, event.completion_tokens, event.cached_tokens, event.reasoning_tokens,
                       event.cache_write_tokens)
    if event.usage_source == UPSTREAM:
        metrics.TOKEN_USAGE.labels(*labels, "chat", "input").observe(event.prompt_tokens)
        metrics.TOKEN_USAGE.labels(*labels, "chat", "output").observe(event.completion_tokens)
        for line, tokens in usage.lines().items():
            metrics.TOKENS.labels(*labels, line).inc(tokens)
    if event.unpriced or not event.currency:
        if event.unpriced and event.usage_source != "none":
            metrics.UNPRICED.labels(*labels).inc()
        return
    price = from_message(event.price) if event.HasField("price") else None
    if event.usage_source == UPSTREAM and price is not None:
        for line, cost in price.line_costs(usage).items():
            # Prometheus samples are floats: the exact amount is in the callback, this is for dashboards.
            metrics.COST.labels(*labels, line, event.currency).inc(float(cost))
    elif event.usage_source == RESERVED and event.cost:
        metrics.COST.labels(*labels, "reserved", event.currency).inc(float(Decimal(event.cost)))


def _dlq_extra(crossing: Crossing, webhook_id: str) -> dict[str, str]:
    return {"dlq_type": THRESHOLD_DLQ_TYPE, "dlq_webhook_id": webhook_id,
            "dlq_threshold": f"{crossing.kind}:{crossing.basis_points}:{crossing.spent}:{crossing.limit}"}


class ThresholdSender:
    """Sends the pending threshold callbacks of settled events through a sender's retries and DLQ (`jobs.Sender`)."""

    def __init__(self, deliverer: Sender) -> None:
        self.deliverer = deliverer
        self._in_flight: dict[str, asyncio.Task[Outcome]] = {}

    async def send_all(self, job: Job, event: UsageEvent, crossings: tuple[Crossing, ...]) -> bool:
        """Deliver (or dead-letter) each crossing; False if shutdown came first (they stay pending)."""
        tenant = self.deliverer.registry().get(event.tenant)
        if tenant is None or tenant.callback is None or tenant.callback_secret is None:
            return True  # they stay pending in Redis and go out once the tenant has a callback
        for crossing in crossings:
            webhook_id = threshold_webhook_id(event.tenant, event.jti, crossing.kind, crossing.basis_points)
            task = self._in_flight.get(webhook_id)
            if task is None:
                task = asyncio.get_running_loop().create_task(self._send(job, tenant, event, crossing, webhook_id))
                self._in_flight[webhook_id] = task
                task.add_done_callback(functools.partial(self._forget, webhook_id))
            if await asyncio.shield(task) is Outcome.ABANDONED:
                return False
        return True

    def _forget(self, webhook_id: str, _done: asyncio.Task[Outcome]) -> None:
        self._in_flight.pop(webhook_id, None)

    async def _send(self, job: Job, tenant: CallbackTarget, event: UsageEvent, crossing: Crossing,
                    webhook_id: str) -> Outcome:
        outcome = await self.deliverer.send(job, tenant, webhook_id, threshold_body(event, crossing),
                                            _dlq_extra(crossing, webhook_id))
        if outcome is Outcome.ABANDONED:
            return outcome
        metrics.BUDGET_THRESHOLDS.labels(tenant.id, crossing.kind, outcome.value).inc()
        log.info("budget threshold callback finished", extra={"jti": event.jti, "budget": crossing.kind,
                                                             "threshold": crossing.fraction, "outcome": outcome.value})
        settlements = self.deliverer.settlements
        if settlements is not None:
            try:
                await settlements.mark_thresholds(event.tenant, event.jti, (crossing,), tuple(event.chain))
            except Exception as exc:  # left pending: a later settlement sends it again, with the same id
                log.warning("could not mark a threshold delivered", extra={"jti": event.jti, "error": str(exc)})
        return outcome

    async def replay(self, job: Job, event: UsageEvent, headers: dict[str, str]) -> Outcome | None:
        """Deliver a dead-lettered threshold callback again (same body, same id); None if it is not one."""
        crossing = Crossing.parse(headers.get("dlq_threshold", ""))
        tenant = self.deliverer.registry().get(event.tenant)
        if crossing is None or tenant is None or tenant.callback is None or tenant.callback_secret is None:
            return None
        webhook_id = threshold_webhook_id(event.tenant, event.jti, crossing.kind, crossing.basis_points)
        return await self.deliverer.send(job, tenant, webhook_id, threshold_body(event, crossing),
                                         _dlq_extra(crossing, webhook_id))
