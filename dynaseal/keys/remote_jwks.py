"""Tenant keys published at a `jwks_url`: one store, refreshed on a schedule and on an unknown `kid`.

Each successful fetch *replaces* the tenant's remote set, so a kid the tenant withdrew stops
verifying after the next refresh. A failed fetch keeps the last good set (never fail open, never
drop to nothing because the tenant's server hiccuped). The authz server owns one store for its
whole life and hands it to every registry it builds, so refreshed keys and the rate limiter
survive a config reload. Fetches run in a worker thread: a slow JWKS server never stalls a Check.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

import httpx
import orjson
from prometheus_client import Counter

from dynaseal.keys.tenants import VerificationKey, parse_jwks

if TYPE_CHECKING:
    from dynaseal.keys.registry_holder import JwksSnapshot, RegistryHolder
    from dynaseal.keys.tenants import Registry

log = logging.getLogger("dynaseal.jwks")

# An unknown kid triggers at most one fetch per tenant per interval, so a flood of tokens with
# made-up kids cannot turn the gateway into a request amplifier against the tenant's server.
MIN_REFRESH_INTERVAL_S = 30.0
DEFAULT_REFRESH_S = 300.0
FETCH_TIMEOUT_S = 2.0   # connect / each read
FETCH_DEADLINE_S = 5.0  # the whole fetch, so a server trickling bytes cannot hold a thread
MAX_JWKS_BYTES = 64 * 1024
MAX_REDIRECTS = 3
SCHEDULER_TICK_S = 1.0
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d{1,10})\"?\s*(?:,|$)", re.IGNORECASE)

REFRESHES = Counter("dynaseal_jwks_refreshes_total", "Remote JWKS fetches by outcome",
                    ["tenant", "result"])


class JwksFetchError(Exception):
    """The JWKS could not be fetched or is not acceptable; the message is safe to log."""


@dataclass(frozen=True, slots=True)
class FetchedJwks:
    """One successfully fetched and parsed JWKS document."""

    keys: tuple[VerificationKey, ...]
    fingerprint: str
    max_age_s: float | None


def check_url(url: httpx.URL | str) -> httpx.URL:
    """The URL if it is an absolute http(s) URL with a host; JwksFetchError otherwise."""
    parsed = httpx.URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise JwksFetchError("JWKS URL must be an absolute http(s) URL")
    return parsed


def _max_age(cache_control: str | None) -> float | None:
    if not cache_control:
        return None
    if "no-store" in cache_control.lower() or "no-cache" in cache_control.lower():
        return 0.0
    match = _MAX_AGE.search(cache_control)
    return float(match.group(1)) if match else None


def parse_document(body: bytes, cache_control: str | None = None) -> FetchedJwks:
    """Parse a JWKS body; every key must be a public key with a kid (else the whole set is refused)."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise JwksFetchError("JWKS body is not JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksFetchError("JWKS body is not an object with a `keys` list")
    try:
        keys = tuple(parse_jwks(document))
    except Exception as exc:  # ValueError, PyJWKError, TypeError from odd members: refuse the set
        raise JwksFetchError(f"JWKS has an unusable key: {type(exc).__name__}: {exc}") from None
    canonical = orjson.dumps(sorted(document["keys"], key=lambda k: str(k.get("kid"))),
                             option=orjson.OPT_SORT_KEYS)
    return FetchedJwks(keys, hashlib.sha256(canonical).hexdigest(), _max_age(cache_control))


def _read_capped(response: httpx.Response, max_bytes: int, deadline: float) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise JwksFetchError(f"JWKS body above {max_bytes} bytes")
    if response.headers.get("content-encoding", "identity").lower() != "identity":
        raise JwksFetchError("JWKS body is compressed (identity was asked for)")
    body = bytearray()
    for chunk in response.iter_raw():
        body += chunk
        if len(body) > max_bytes:
            raise JwksFetchError(f"JWKS body above {max_bytes} bytes")
        if time.monotonic() > deadline:
            raise JwksFetchError("JWKS fetch took too long")
    return bytes(body)


def fetch_jwks(url: str, *, max_bytes: int = MAX_JWKS_BYTES, timeout_s: float = FETCH_TIMEOUT_S,
               deadline_s: float = FETCH_DEADLINE_S) -> FetchedJwks:
    """Fetch and parse a JWKS (blocking): http(s) only, capped while reading, bounded in time.

    Redirects are followed by hand, at most MAX_REDIRECTS, only to http(s) and never from https
    down to http.
    """
    target = check_url(url)
    deadline = time.monotonic() + deadline_s
    headers = {"accept": "application/json", "accept-encoding": "identity"}
    with httpx.Client(timeout=timeout_s, follow_redirects=False) as client:
        for _ in range(MAX_REDIRECTS + 1):
            with client.stream("GET", target, headers=headers) as response:
                if response.is_redirect:
                    location = target.join(response.headers.get("location", ""))
                    nxt = check_url(location)
                    if target.scheme == "https" and nxt.scheme != "https":
                        raise JwksFetchError("JWKS redirect from https to http refused")
                    target = nxt
                    continue
                if response.status_code != 200:
                    raise JwksFetchError(f"JWKS server answered HTTP {response.status_code}")
                body = _read_capped(response, max_bytes, deadline)
                return parse_document(body, response.headers.get("cache-control"))
    raise JwksFetchError(f"more than {MAX_REDIRECTS} redirects")


@dataclass
class _Source:
    """What the store knows about one tenant's jwks_url."""

    url: str
    refresh_s: float
    keys: tuple[VerificationKey, ...] = ()
    fingerprint: str | None = None
    due: float = 0.0  # monotonic time of the next scheduled fetch
    tried: bool = False
    last_unknown_kid_fetch: float = -math.inf  # what the unknown-kid limiter counts
    inflight: asyncio.Future[None] | None = None


class RemoteJwks:
    """The latest remote key set of every jwks_url tenant, shared across config reloads."""

    def __init__(self, *, min_interval_s: float = MIN_REFRESH_INTERVAL_S, max_bytes: int = MAX_JWKS_BYTES,
                 timeout_s: float = FETCH_TIMEOUT_S, deadline_s: float = FETCH_DEADLINE_S) -> None:
        self.min_interval_s = min_interval_s
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.deadline_s = deadline_s
        self._sources: dict[str, _Source] = {}
        # Bumped whenever any tenant's set changes: a registry built at an older generation is stale.
        self.generation = 0
        # Who is told of every change (the authz server's registry holders); weakly, so a holder that a
        # config reload dropped is simply forgotten.
        self._holders: weakref.WeakSet[RegistryHolder] = weakref.WeakSet()

    def subscribe(self, holder: RegistryHolder) -> None:
        """Push every later change of any tenant's set to `holder` (as a `JwksSnapshot`)."""
        self._holders.add(holder)

    def snapshot(self) -> JwksSnapshot:
        """Every tracked tenant's latest keys, at the current generation."""
        from dynaseal.keys.registry_holder import JwksSnapshot

        return JwksSnapshot(self.generation, MappingProxyType({t: s.keys for t, s in self._sources.items()}))

    def _changed(self) -> None:
        """A tenant's set changed: a new generation, pushed to every holder."""
        self.generation += 1
        snapshot = self.snapshot()
        for holder in list(self._holders):
            holder.push(snapshot)

    def track(self, sources: Mapping[str, tuple[str, float]]) -> None:
        """Follow exactly these tenants (id -> (url, refresh_s)); a changed URL starts from no keys."""
        for tenant_id in list(self._sources):
            moved = tenant_id not in sources or self._sources[tenant_id].url != sources[tenant_id][0]
            if moved and self._sources.pop(tenant_id).keys:
                self._changed()
        for tenant_id, (url, refresh_s) in sources.items():
            source = self._sources.get(tenant_id)
            if source is None:
                self._sources[tenant_id] = _Source(url, refresh_s)
            elif source.refresh_s != refresh_s:
                source.due = min(source.due, time.monotonic() + refresh_s)
                source.refresh_s = refresh_s

    def keys_for(self, tenant_id: str) -> tuple[VerificationKey, ...]:
        """The tenant's latest good remote keys (empty before the first successful fetch)."""
        source = self._sources.get(tenant_id)
        return source.keys if source is not None else ()

    def apply(self, registry: Registry) -> Registry:
        """The registry with every tracked tenant's remote keys set to the latest ones."""
        snapshot = self.snapshot()
        return registry.with_remote_keys(snapshot.keys_by_tenant, snapshot.generation)

    def fetch_untried(self) -> None:
        """Fetch, blocking, every source never tried yet (at start-up, before serving)."""
        for tenant_id, source in list(self._sources.items()):
            if not source.tried:
                source.tried = True
                try:
                    fetched = fetch_jwks(source.url, max_bytes=self.max_bytes, timeout_s=self.timeout_s,
                                         deadline_s=self.deadline_s)
                except Exception as exc:  # start-up goes on; the tenant's kids are refused until it answers
                    self._failed(tenant_id, source, exc)
                else:
                    self._adopt(tenant_id, source, fetched)

    async def refresh(self, tenant_id: str) -> None:
        """Fetch the tenant's JWKS now, or join the fetch already under way."""
        source = self._sources.get(tenant_id)
        if source is None:
            return
        if source.inflight is None:
            source.tried = True
            source.inflight = asyncio.ensure_future(self._fetch(tenant_id, source))
        await asyncio.shield(source.inflight)

    async def refresh_for_unknown_kid(self, tenant_id: str) -> None:
        """Refresh because a token named a kid we lack: at most once per min_interval_s per tenant."""
        source = self._sources.get(tenant_id)
        if source is None:
            return
        if source.inflight is None:
            now = time.monotonic()
            if now - source.last_unknown_kid_fetch < self.min_interval_s:
                return
            source.last_unknown_kid_fetch = now
        await self.refresh(tenant_id)

    async def refresh_due(self) -> None:
        """Refresh every tenant whose scheduled time has come."""
        now = time.monotonic()
        due = [t for t, s in self._sources.items() if s.due <= now and s.inflight is None]
        if due:
            await asyncio.gather(*(self.refresh(t) for t in due))

    async def run(self, tick_s: float = SCHEDULER_TICK_S) -> None:
        """The scheduled refresh loop (runs until cancelled)."""
        while True:
            try:
                await self.refresh_due()
            except Exception:  # one bad round must not end the schedule
                log.exception("scheduled jwks refresh failed")
            await asyncio.sleep(tick_s)

    async def _fetch(self, tenant_id: str, source: _Source) -> None:
        try:
            fetched = await asyncio.to_thread(fetch_jwks, source.url, max_bytes=self.max_bytes,
                                              timeout_s=self.timeout_s, deadline_s=self.deadline_s)
        except Exception as exc:
            self._failed(tenant_id, source, exc)
        else:
            if self._sources.get(tenant_id) is source:  # not untracked or re-pointed meanwhile
                self._adopt(tenant_id, source, fetched)
        finally:
            source.inflight = None

    def _failed(self, tenant_id: str, source: _Source, exc: Exception) -> None:
        # Keep the last good set; try again soon, but no sooner than the unknown-kid limit allows.
        source.due = time.monotonic() + min(self.min_interval_s, source.refresh_s)
        REFRESHES.labels(tenant_id, "failed").inc()
        log.warning("jwks refresh failed; keeping the last good set",
                    extra={"tenant": tenant_id, "error": f"{type(exc).__name__}: {exc}",
                           "keys": len(source.keys)})

    def _adopt(self, tenant_id: str, source: _Source, fetched: FetchedJwks) -> None:
        # A server's max-age may bring the next fetch forward, never past the configured interval.
        wait = source.refresh_s if fetched.max_age_s is None else fetched.max_age_s
        source.due = time.monotonic() + min(max(wait, self.min_interval_s), source.refresh_s)
        if fetched.fingerprint == source.fingerprint:
            REFRESHES.labels(tenant_id, "unchanged").inc()
            return
        source.keys, source.fingerprint = fetched.keys, fetched.fingerprint
        self._changed()
        REFRESHES.labels(tenant_id, "changed").inc()
        log.info("jwks refreshed", extra={"tenant": tenant_id, "kids": [k.kid for k in fetched.keys]})

