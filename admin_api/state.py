"""What the admin routes share: the config file's path, the tenant store, and a proposed change's check."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

from fastapi import HTTPException, Request
from pydantic import ValidationError

from dynaseal.config import ConfigError, DynasealConfig, load_config
from dynaseal.runtime.locations import resolve_redis
from dynaseal.runtime.views import Runtime
from dynaseal.secrets import use_stored_secrets
from dynaseal.tenancy.chains import missing_chains
from dynaseal.tenancy.overlay import Tenancy, overlay
from dynaseal.tenancy.source import TenancySource
from dynaseal.tenancy.store import Snapshot, StoredSecret, StoredTenant, TenantStore


@dataclass
class AdminState:
    """The admin service's view of one config file and its tenant store."""

    source: TenancySource

    def file_config(self) -> DynasealConfig:
        """The config file alone (the store's tenants not included)."""
        return load_config(self.source.config_path, self.source.data_dir)

    def store(self) -> TenantStore:
        """The tenant store (the config has an `admin` section: this service runs because of it)."""
        store = self.source.store(self.file_config())
        assert store is not None
        return store

    def redis_url(self) -> str | None:
        """The gateway's Redis (the ledger), if one is configured or started by the stack."""
        return resolve_redis(self.file_config()).value

    def current(self) -> Tenancy:
        """The effective config now (file + store); a 409 naming the problem if it does not load."""
        try:
            return overlay(self.file_config(), self.store().snapshot(), time.time())
        except ConfigError as exc:
            raise HTTPException(409, {"message": "the current configuration does not load",
                                      "problems": str(exc).splitlines()}) from None

    def check(self, snapshot: Snapshot) -> Tenancy:
        """The config a proposed store state would give, checked as every service will check it
        (models, routes, secrets present, files readable); 422 naming each problem otherwise."""
        try:
            file_cfg = self.file_config()
            tenancy = overlay(file_cfg, snapshot, time.time())
            if left_out := _newly_quarantined(snapshot, tenancy, self.store().snapshot(), file_cfg):
                raise ConfigError("invalid tenant:\n  - " + "\n  - ".join(left_out))
            if missing := missing_chains(file_cfg, tenancy.cfg):
                raise ConfigError("invalid routes:\n  - " + "\n  - ".join(missing))
            use_stored_secrets(tenancy.secrets)
            runtime = Runtime.from_config(tenancy.cfg)
            runtime.authz(fetch_new_jwks=False)
            runtime.consumer()
        except ConfigError as exc:
            raise HTTPException(422, {"message": "change refused: the configuration would be invalid",
                                      "problems": [line.strip(" -") for line in str(exc).splitlines()[1:]]
                                      or [str(exc)]}) from None
        finally:
            current = self.source.current
            use_stored_secrets(current.secrets if current else {})
        return tenancy


def admin_state(request: Request) -> AdminState:
    """The state set on the app when it was built."""
    state: AdminState = request.app.state.admin
    return state


def with_tenant(snapshot: Snapshot, tenant_id: str, document: dict[str, Any] | None = None,
                disabled: bool | None = None) -> Snapshot:
    """A snapshot with one tenant's row changed (for checking a change before it is written)."""
    old = snapshot.tenants.get(tenant_id) or StoredTenant(tenant_id, None, False, None)
    new = replace(old, document=document if document is not None else old.document,
                  disabled=old.disabled if disabled is None else disabled)
    return replace(snapshot, tenants={**snapshot.tenants, tenant_id: new})


def with_secrets(snapshot: Snapshot, tenant_id: str, secrets: dict[str, str],
                 retires_in_s: float | None = None) -> Snapshot:
    """A snapshot with secrets added to one tenant (ids below every stored one; only for checking)."""
    now = time.time()
    added = tuple(StoredSecret(-n - 1, tenant_id, purpose, value, now,
                               None if retires_in_s is None else now + retires_in_s)
                  for n, (purpose, value) in enumerate(secrets.items()))
    return replace(snapshot, secrets=snapshot.secrets + added)


def validation_problems(exc: ValidationError) -> list[str]:
    """A pydantic error as one line per problem, naming where."""
    return [f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()]


def _newly_quarantined(snapshot: Snapshot, proposed: Tenancy, stored: Snapshot, file_cfg: DynasealConfig) -> list[str]:
    """The problems of stored tenants a change would leave out (overlay.Tenancy.quarantined): every one the
    change writes, and every one served now. A row left out already and not touched does not block others."""
    if not proposed.quarantined:
        return []
    now = overlay(file_cfg, stored, time.time()).quarantined
    return [problem for tenant_id, problem in sorted(proposed.quarantined.items())
            if tenant_id not in now or snapshot.tenants.get(tenant_id) != stored.tenants.get(tenant_id)]
