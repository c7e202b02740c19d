"""What the usage, operations and console rooms of the admin API read: the usage store, the broker, the
gateway's Redis and authz's metrics. Built once from the config and kept on the app's state."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.staticfiles import StaticFiles
from sqlalchemy import Engine

from dynaseal.runtime.views import Runtime
from dynaseal.usage_store.schema import database_url, make_engine

CONSOLE_DIR = Path(__file__).resolve().parent / "static" / "console"
CONSOLE_PATH = "/console"
# A tenant this config does not list (created as data since): its max_ttl is unknown here, so its markers last
# a year, longer than any key is expected to live (a marker costs a few bytes; an early expiry re-admits a key).
FALLBACK_MAX_TTL_S = 366 * 86400


@dataclass(frozen=True)
class ConsoleContext:
    """The resources of the usage and operations routes."""

    engine: Engine
    kafka_bootstrap: str
    redis_url: str
    authz_metrics_urls: tuple[str, ...]
    max_ttl_s: dict[str, int] = field(default_factory=dict)
    # The tenants' max_ttl in the config the service runs now (tenants created or changed since it started).
    live_max_ttl_s: Callable[[], dict[str, int]] | None = field(default=None, compare=False)

    @classmethod
    def from_runtime(cls, runtime: Runtime, database: str | None = None) -> ConsoleContext:
        """The context of one loaded config (`database`: a SQLAlchemy URL other than the configured one)."""
        gw = runtime.cfg.gateway
        return cls(make_engine(database or database_url(runtime.cfg)), runtime.kafka.value, runtime.redis.value,
                   (f"http://{gw.host}:{gw.ports.authz_metrics}/metrics",),
                   {t.id: t.limits.max_ttl for t in runtime.cfg.tenants})

    def key_lifetime_s(self, tenant: str) -> int:
        """The longest a key of `tenant` can live: how long its revocation marker must last."""
        live = self.live_max_ttl_s() if self.live_max_ttl_s is not None else {}
        # The longer of then and now: a key minted before a max_ttl was lowered still lives its full life.
        known = {t: max(self.max_ttl_s.get(t, 0), live.get(t, 0)) for t in {*self.max_ttl_s, *live}}
        return known.get(tenant) or max([FALLBACK_MAX_TTL_S, *known.values()])


def install_console(app: FastAPI, context: ConsoleContext) -> None:
    """Give the usage and operations routes their context, and serve the console's pages at /console/."""
    app.state.console = context
    app.mount(CONSOLE_PATH, StaticFiles(directory=CONSOLE_DIR, html=True), name="console")


def console_context(request: Request) -> ConsoleContext:
    """The context `install_console` set (a dependency of every route of these rooms)."""
    context: ConsoleContext = request.app.state.console
    return context


def follow_max_ttls(app: FastAPI, current: Callable[[], dict[str, int]]) -> None:
    """Let revocations size their markers by the config the service runs now, not only the one it started with."""
    app.state.console = replace(app.state.console, live_max_ttl_s=current)
