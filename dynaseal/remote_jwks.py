"""Tenant keys published at a `jwks_url`: fetched at load, refreshed when an unknown `kid` shows up.

A refresh happens at most once per `MIN_REFRESH_INTERVAL_S` per tenant, so a flood of tokens
with made-up kids cannot turn the gateway into a request amplifier against the tenant's JWKS.
"""

from __future__ import annotations

import logging
import time

import httpx

from dynaseal.tenants import VerificationKey, parse_jwks

log = logging.getLogger("dynaseal.jwks")

MIN_REFRESH_INTERVAL_S = 30.0
FETCH_TIMEOUT_S = 2.0
MAX_JWKS_BYTES = 256 * 1024


def _parse(response: httpx.Response) -> list[VerificationKey]:
    response.raise_for_status()
    if len(response.content) > MAX_JWKS_BYTES:
        raise ValueError("JWKS document is too large")
    return parse_jwks(response.json())


def fetch_jwks(url: str) -> list[VerificationKey]:
    """Fetch and parse a JWKS (blocking; used at config load)."""
    with httpx.Client(timeout=FETCH_TIMEOUT_S, follow_redirects=False) as client:
        return _parse(client.get(url))


class JwksRefresher:
    """Rate-limited async refresh of remote JWKS documents, per tenant."""

    def __init__(self) -> None:
        self._last_attempt: dict[str, float] = {}

    async def refresh(self, tenant_id: str, url: str) -> list[VerificationKey] | None:
        """The tenant's current keys, or None if refreshed too recently or the fetch failed."""
        now = time.monotonic()
        if now - self._last_attempt.get(tenant_id, -MIN_REFRESH_INTERVAL_S) < MIN_REFRESH_INTERVAL_S:
            return None
        self._last_attempt[tenant_id] = now
        try:
            async with httpx.AsyncClient(timeout=FETCH_TIMEOUT_S, follow_redirects=False) as client:
                keys = _parse(await client.get(url))
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("jwks refresh failed", extra={"tenant": tenant_id, "error": str(exc)})
            return None
        log.info("jwks refreshed", extra={"tenant": tenant_id, "keys": len(keys)})
        return keys
