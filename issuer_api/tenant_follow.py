"""The issuer follows its tenant as the tenant store changes it (limits, webhook secret), without a restart.

The state is replaced as a whole (a frozen copy sharing the database and keys), so a request sees one
consistent view; a config that does not load leaves the issuer on its last good one.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import replace

from fastapi import FastAPI

from dynaseal.config import ConfigError
from dynaseal.runtime.views import Runtime
from dynaseal.tenancy.overlay import Tenancy
from dynaseal.tenancy.source import POLL_S, TenancySource
from issuer_api.state import IssuerState, webhook_of

log = logging.getLogger("issuer_api")


def apply(app: FastAPI, tenancy: Tenancy) -> None:
    """Make the app serve its tenant as `tenancy` has it (raises ConfigError, leaving the app as it was)."""
    view = Runtime.from_config(tenancy.cfg).issuer()
    state: IssuerState = app.state.issuer
    app.state.issuer = replace(state, cfg=tenancy.cfg, limits=view.limits, webhook=webhook_of(view.callback_secret))
    app.state.generation = tenancy.generation


def follow_tenant(app: FastAPI, config_path: str | os.PathLike[str] | None, stop: threading.Event,
                  poll_s: float = POLL_S) -> TenancySource:
    """Load the tenant store's view of the issuer's tenant now, then again whenever it changes (a thread)."""
    source = TenancySource(config_path)
    tenancy = source.load()
    apply(app, tenancy)
    source.accept(tenancy)

    def loop() -> None:
        while not stop.wait(poll_s):
            try:
                if source.changed():
                    tenancy = source.load()
                    apply(app, tenancy)
                    source.accept(tenancy)
                    log.info("config reloaded", extra={"generation": tenancy.generation})
            except ConfigError as exc:
                log.error("config reload rejected; keeping the previous config", extra={"error": str(exc)})
            except Exception:  # the follower must outlive a bad poll
                log.exception("config watch failed; trying again")

    threading.Thread(target=loop, name="tenancy-watch", daemon=True).start()
    return source
