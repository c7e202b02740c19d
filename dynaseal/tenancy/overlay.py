"""How the tenant store combines with the config file: one validated config, as if it were all one file.

The file stays the source of its own tenants (GitOps): the store may add seed-format signing secrets
and webhook secrets to them, retire their file secret after a rotation, and disable them. Tenants
created through the admin API live only in the store; an id the file has cannot be created there.
The result is validated by the file's own models and whole-config validators (routes, ids, issuer).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from pydantic import ValidationError

from dynaseal.config import ConfigError, DynasealConfig
from dynaseal.secrets import STORED_PREFIX, SecretResolver
from dynaseal.tenancy.store import PURPOSE_CALLBACK, PURPOSE_SEED, Snapshot, StoredSecret, StoredTenant
from dynaseal.tenant_config import KeyConfig, TenantConfig


def seed_marker(tenant_id: str) -> str:
    """The `secret_env` a stored tenant's document uses for "the seed secrets the store holds"."""
    return f"{STORED_PREFIX}{tenant_id}/{PURPOSE_SEED}"


def callback_marker(tenant_id: str) -> str:
    """The `secret_env` a stored tenant's document uses for "the webhook secret the store holds"."""
    return f"{STORED_PREFIX}{tenant_id}/{PURPOSE_CALLBACK}"


def _name(secret: StoredSecret) -> str:
    return f"{STORED_PREFIX}{secret.tenant_id}/{secret.purpose}/{secret.id}"


@dataclass(frozen=True)
class Tenancy:
    """The config a service runs: the file with the store laid over it, at one generation."""

    cfg: DynasealConfig
    generation: int = 0
    disabled: frozenset[str] = frozenset()
    # When a rotation's grace period ends: the config changes then although the store does not.
    next_change_at: float | None = None
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    # Stored tenants left out because they do not validate with this file (id -> the problem): their keys
    # are refused as an unknown tenant's, every other tenant is served.
    quarantined: dict[str, str] = field(default_factory=dict)


@dataclass
class _Overlay:
    now: float
    secrets: dict[str, str] = field(default_factory=dict)
    changes: list[float] = field(default_factory=list)

    def _active(self, rows: Iterable[StoredSecret], purpose: str) -> list[StoredSecret]:
        found = []
        for row in rows:
            if row.purpose != purpose:
                continue
            if purpose == PURPOSE_SEED and row.retires_at is not None:
                if row.retires_at <= self.now:
                    continue
                self.changes.append(row.retires_at)
            found.append(row)
            self.secrets[_name(row)] = row.value
        return found

    def _file_secret(self, tc: TenantConfig) -> str | None:
        """The file's own webhook secret, as a name the rotation's previous secrets can hold."""
        assert tc.callback is not None
        if tc.callback.secret_env or not tc.callback.secret_file:
            return tc.callback.secret_env
        resolver = SecretResolver()
        secret = resolver.from_file(tc.callback.secret_file, f"tenant {tc.id} callback")
        if secret is None:  # unreadable: the load names it through the new secret's checks anyway
            return None
        self.secrets[_file_secret_name(tc.id)] = secret.get_secret_value()
        return _file_secret_name(tc.id)

    def tenant(self, tc: TenantConfig, stored: StoredTenant | None, rows: list[StoredSecret]) -> TenantConfig:
        seeds = self._active(rows, PURPOSE_SEED)
        keys = [k for k in tc.keys if k.secret_env != seed_marker(tc.id)]
        retires = stored.file_seed_retires_at if stored else None
        if retires is not None and seeds:
            if retires <= self.now:
                keys = [k for k in keys if k.kid is not None]
            else:
                self.changes.append(retires)
        keys += [KeyConfig(alg="HS256", secret_env=_name(row)) for row in seeds]
        update: dict[str, object] = {"keys": tuple(keys)}
        callbacks = self._active(rows, PURPOSE_CALLBACK)
        if tc.callback is not None and callbacks:
            newest = callbacks[-1]
            previous: tuple[str, ...] = ()
            if newest.retires_at is not None and newest.retires_at > self.now:
                self.changes.append(newest.retires_at)
                before = _name(callbacks[-2]) if len(callbacks) > 1 else self._file_secret(tc)
                previous = (before,) if before and before != callback_marker(tc.id) else ()
            update["callback"] = tc.callback.model_copy(update={
                "secret_env": _name(newest), "secret_file": None, "previous_secret_envs": previous})
        return tc.model_copy(update=update)


def _file_secret_name(tenant_id: str) -> str:
    return f"{STORED_PREFIX}{tenant_id}/{PURPOSE_CALLBACK}/file"


def overlay(file_cfg: DynasealConfig, snapshot: Snapshot, now: float) -> Tenancy:
    """The file's config with the store laid over it; ConfigError naming every problem."""
    state = _Overlay(now)
    rows: dict[str, list[StoredSecret]] = {}
    for secret in snapshot.secrets:
        rows.setdefault(secret.tenant_id, []).append(secret)
    file_ids = {tc.id for tc in file_cfg.tenants}
    tenants = [state.tenant(tc, snapshot.tenants.get(tc.id), rows.get(tc.id, [])) for tc in file_cfg.tenants]
    quarantined: dict[str, str] = {}
    for tenant_id, stored in sorted(snapshot.tenants.items()):
        if stored.document is None or tenant_id in file_ids:
            continue
        try:
            tc = TenantConfig.model_validate(stored.document)
        except ValidationError as exc:
            quarantined[tenant_id] = f"stored tenant {tenant_id}: {exc.errors()[0]['msg']}"
            continue
        tenants.append(state.tenant(tc, stored, rows.get(tenant_id, [])))
    try:
        cfg = revalidate(file_cfg, tenants)
    except ConfigError:
        # One stored row (written under another file or version) must not stop every service: each stored
        # tenant is tried alone with the file's, the ones that fail are left out and named.
        tenants = _valid_alone(file_cfg, tenants, len(file_cfg.tenants), quarantined)
        cfg = revalidate(file_cfg, tenants)
    disabled = frozenset(t.id for t in snapshot.tenants.values() if t.disabled)
    upcoming = [moment for moment in state.changes if moment > now]
    return Tenancy(cfg, snapshot.generation, disabled, min(upcoming) if upcoming else None, state.secrets,
                   quarantined)


def _valid_alone(file_cfg: DynasealConfig, tenants: list[TenantConfig], file_count: int,
                 quarantined: dict[str, str]) -> list[TenantConfig]:
    """The file's tenants and each stored one that validates beside them alone; the others into `quarantined`."""
    kept = tenants[:file_count]
    for tc in tenants[file_count:]:
        try:
            revalidate(file_cfg, [*tenants[:file_count], tc])
        except ConfigError as exc:
            quarantined[tc.id] = f"stored tenant {tc.id}: " + "; ".join(
                line.strip(" -") for line in str(exc).splitlines()[1:])
            continue
        kept.append(tc)
    return kept


def revalidate(file_cfg: DynasealConfig, tenants: list[TenantConfig]) -> DynasealConfig:
    """The file's config with these tenants, through every model and whole-config validator again."""
    raw = file_cfg.model_dump(round_trip=True)
    raw["tenants"] = [t.model_dump(round_trip=True) for t in tenants]
    try:
        return DynasealConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [f"  - {'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()]
        raise ConfigError("invalid configuration with the tenant store:\n" + "\n".join(lines)) from None
