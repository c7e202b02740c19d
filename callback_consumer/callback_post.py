"""Signed POSTs to a tenant's callback URL: one pool and one signer per tenant, each attempt timed.

A base of the Deliverer (callback_consumer.delivery), which sets the state declared here.
"""

from __future__ import annotations

import time

from callback_consumer import metrics
from callback_consumer.http_client import CallbackClient, CallbackTransportError
from callback_consumer.tenant_gates import TenantGates
from dynaseal.backoff import retry_after_seconds
from dynaseal.runtime.views import CallbackTarget
from dynaseal.usage.callbacks import CallbackSigner


class CallbackPoster(TenantGates):
    """One signed POST at a time, within the tenant's gates; the status (or None) and Retry-After."""

    _clients: dict[str, CallbackClient]
    _signers: dict[str, tuple[tuple[str, tuple[str, ...]], CallbackSigner]]

    def _client(self, tenant: CallbackTarget) -> CallbackClient:
        assert tenant.callback is not None
        client = self._clients.get(tenant.id)
        if client is None or client.url != tenant.callback.url:  # new tenant, or its URL changed on reload
            if client is not None:
                client.close()
            # One pool per tenant: a slow tenant holds its own connections, never another's.
            client = self._clients[tenant.id] = CallbackClient(tenant.callback.url, max_idle=self._limit(tenant))
        return client

    def _signer(self, tenant: CallbackTarget) -> CallbackSigner:
        assert tenant.callback_secret is not None
        secret = tenant.callback_secret.get_secret_value()
        # During a webhook secret's rotation the previous secrets sign too (one signature each).
        previous = tuple(old.get_secret_value() for old in tenant.previous_secrets)
        cached = self._signers.get(tenant.id)
        if cached is None or cached[0] != (secret, previous):
            cached = ((secret, previous), CallbackSigner.from_secret(secret, previous))
            self._signers[tenant.id] = cached
        return cached[1]

    async def _attempt(self, tenant: CallbackTarget, webhook_id: str, body: bytes) -> tuple[int | None, float | None]:
        """One POST: (status or None on a timeout/connection error, Retry-After seconds)."""
        assert tenant.callback is not None
        headers = self._signer(tenant).headers(webhook_id, body)
        started = time.perf_counter()
        try:
            reply = await self._client(tenant).post(body, headers, tenant.callback.timeout_s)
        except TimeoutError:
            metrics.CALLBACK_SECONDS.labels("timeout").observe(time.perf_counter() - started)
            return None, None
        except CallbackTransportError:
            metrics.CALLBACK_SECONDS.labels("connection_error").observe(time.perf_counter() - started)
            return None, None
        metrics.CALLBACK_SECONDS.labels(f"{reply.status // 100}xx").observe(time.perf_counter() - started)
        return reply.status, retry_after_seconds(reply.retry_after)

    async def attempt_once(self, tenant: CallbackTarget, webhook_id: str,
                           body: bytes) -> tuple[int | None, float | None]:
        """One signed POST within the tenant's concurrency (a parked event's replay probes with it)."""
        async with self._gate(tenant), self._group_slot(tenant):
            return await self._attempt(tenant, webhook_id, body)

    async def attempt_batch(self, tenant: CallbackTarget, webhook_id: str, body: bytes) -> tuple[int | None, bytes]:
        """One signed batch POST within the tenant's concurrency: (status or None, reply body)."""
        assert tenant.callback is not None
        headers = self._signer(tenant).headers(webhook_id, body)
        async with self._gate(tenant), self._group_slot(tenant):
            try:
                reply = await self._client(tenant).post(body, headers, tenant.callback.timeout_s)
            except (TimeoutError, CallbackTransportError):
                return None, b""
        return reply.status, reply.body

    async def aclose(self) -> None:
        """Close every tenant's connections."""
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()
