"""`/admin/v1/tenants`: create, read, change, disable and rotate tenants, stored durably (dynaseal.tenancy).

A tenant written here is validated with the config file's own models and whole-config checks before
it is stored; secret values sent here are kept in the store, never returned and never logged.
"""

from __future__ import annotations

import base64
import secrets
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from admin_api.auth import AdminOnly
from admin_api.state import AdminState, admin_state, validation_problems, with_secrets, with_tenant
from admin_api.write_rules import check_callback_target, check_env_references, check_seed_secret, check_store_tenant_id
from dynaseal.redaction import remember_secrets
from dynaseal.secrets import STORED_PREFIX
from dynaseal.tenancy.overlay import Tenancy, callback_marker, seed_marker
from dynaseal.tenancy.store import PURPOSE_CALLBACK, PURPOSE_SEED
from dynaseal.tenant_config import TenantConfig

router = APIRouter(tags=["tenants"], dependencies=[AdminOnly])
State = Annotated[AdminState, Depends(admin_state)]
MAX_GRACE_S = 30 * 86400


class TenantSecrets(BaseModel):
    """Secret values the store keeps for a tenant (instead of `*_env` / `*_file` references)."""

    model_config = ConfigDict(extra="forbid")
    seed: SecretStr | None = Field(None, description="seed-format (kid-less HS256) signing secret")
    callback: SecretStr | None = Field(None, description="Standard Webhooks `whsec_` secret")


class TenantWrite(BaseModel):
    """A tenant as in the config file (`tenant`), plus secret values for the store to hold."""

    model_config = ConfigDict(extra="forbid")
    tenant: dict[str, Any]
    secrets: TenantSecrets = Field(default_factory=TenantSecrets)


class Rotation(BaseModel):
    """A rotation: the new secret (generated when absent) and how long the previous one keeps working."""

    model_config = ConfigDict(extra="forbid")
    secret: SecretStr | None = None
    grace_s: float = Field(3600, ge=0, le=MAX_GRACE_S)


def _summary(tenancy: Tenancy, tenant_id: str, source: str) -> dict[str, Any]:
    tc = next(t for t in tenancy.cfg.tenants if t.id == tenant_id)
    # The document as the services run it: references only (`dynaseal-store:...`, `*_env`), never a value.
    return {"id": tc.id, "source": source, "disabled": tenant_id in tenancy.disabled,
            "generation": tenancy.generation, "tenant": tc.model_dump(mode="json", exclude_defaults=True)}


def _source(state: AdminState, tenant_id: str) -> str:
    return "file" if any(t.id == tenant_id for t in state.file_config().tenants) else "store"


def _document(body: TenantWrite, tenant_id: str | None = None,
              stored: dict[str, Any] | None = None) -> tuple[str, dict[str, Any], dict[str, str]]:
    """Validate the tenant as the file would be, with stored-secret references where values were given
    (and, replacing `stored`, where the store already holds the tenant's secrets)."""
    doc = dict(body.tenant)
    if stored is not None and tenant_id is not None:
        _keep_stored_secrets(doc, body, tenant_id, stored)
    if tenant_id is not None:
        doc.setdefault("id", tenant_id)
        if doc["id"] != tenant_id:
            raise HTTPException(422, {"message": "tenant.id differs from the id in the path",
                                      "problems": [f"tenant.id: {doc['id']!r} != {tenant_id!r}"]})
    tid = str(doc.get("id", ""))
    # Known to the redactor before anything could log them (a database error quotes its parameters).
    remember_secrets([body.secrets.seed, body.secrets.callback])
    values: dict[str, str] = {}
    if body.secrets.seed is not None:
        check_seed_secret(body.secrets.seed.get_secret_value(), "secrets.seed")
        doc["keys"] = [*doc.get("keys", []), {"alg": "HS256", "secret_env": seed_marker(tid)}]
        values[PURPOSE_SEED] = body.secrets.seed.get_secret_value()
    if body.secrets.callback is not None:
        callback = doc.get("callback")
        if not isinstance(callback, dict) or callback.get("secret_env") or callback.get("secret_file"):
            raise HTTPException(422, {"message": "secrets.callback needs tenant.callback without secret_env "
                                                 "or secret_file", "problems": ["tenant.callback"]})
        doc["callback"] = {**callback, "secret_env": callback_marker(tid)}
        values[PURPOSE_CALLBACK] = body.secrets.callback.get_secret_value()
    try:
        tc = TenantConfig.model_validate(doc)
    except ValidationError as exc:
        raise HTTPException(422, {"message": "invalid tenant", "problems": validation_problems(exc)}) from None
    _own_stored_secrets_only(tc)
    if PURPOSE_CALLBACK in values:
        _check_webhook_secret(values[PURPOSE_CALLBACK])
    return tc.id, tc.model_dump(mode="json", exclude_defaults=True), values


def _keep_stored_secrets(doc: dict[str, Any], body: TenantWrite, tenant_id: str, stored: dict[str, Any]) -> None:
    """Secrets the store already holds stay referenced when a replacement gives no new values."""
    had_seed = any(k.get("secret_env") == seed_marker(tenant_id) for k in stored.get("keys", []))
    keys = doc.get("keys", [])
    if had_seed and body.secrets.seed is None and isinstance(keys, list):
        doc["keys"] = [*keys, {"alg": "HS256", "secret_env": seed_marker(tenant_id)}]
    old = stored.get("callback") or {}
    new = doc.get("callback")
    if (old.get("secret_env") == callback_marker(tenant_id) and body.secrets.callback is None
            and isinstance(new, dict) and not new.get("secret_env") and not new.get("secret_file")):
        doc["callback"] = {**new, "secret_env": callback_marker(tenant_id)}


def _own_stored_secrets_only(tc: TenantConfig) -> None:
    """A tenant may name only its own stored secrets (never another tenant's `dynaseal-store:` entry)."""
    named = [k.secret_env for k in tc.keys]
    if tc.callback is not None:
        named += [tc.callback.secret_env, *tc.callback.previous_secret_envs]
    if tc.upstream is not None:
        named.append(tc.upstream.api_key_env)
    allowed = {seed_marker(tc.id), callback_marker(tc.id)}
    foreign = sorted({n for n in named if n and n.startswith(STORED_PREFIX) and n not in allowed})
    if foreign:
        raise HTTPException(422, {"message": "invalid tenant", "problems": [
            f"{name}: a stored secret is given as a value in `secrets`, not named" for name in foreign]})


def _check_webhook_secret(value: str) -> None:
    body = value.removeprefix("whsec_")
    try:
        ok = len(base64.b64decode(body, validate=True)) >= 16
    except ValueError:
        ok = False
    if not value.startswith("whsec_") or not ok:
        raise HTTPException(422, {"message": "invalid webhook secret",
                                  "problems": ["secrets.callback: a whsec_ secret of at least 16 base64 bytes"]})


@router.get("/tenants")
def list_tenants(state: State) -> dict[str, Any]:
    """Every tenant the services run (file and store), with its source and whether it is disabled."""
    tenancy = state.current()
    file_ids = {t.id for t in state.file_config().tenants}
    return {"generation": tenancy.generation,
            "tenants": [_summary(tenancy, t.id, "file" if t.id in file_ids else "store") for t in tenancy.cfg.tenants],
            "quarantined": [{"id": tid, "problem": problem} for tid, problem in sorted(tenancy.quarantined.items())]}


@router.get("/tenants/{tenant_id}")
def get_tenant(tenant_id: str, state: State) -> dict[str, Any]:
    """One tenant as the services run it (secret references, never values)."""
    tenancy = state.current()
    if not any(t.id == tenant_id for t in tenancy.cfg.tenants):
        raise HTTPException(404, f"no tenant {tenant_id!r}")
    return _summary(tenancy, tenant_id, _source(state, tenant_id))


@router.post("/tenants", status_code=201)
def create_tenant(body: TenantWrite, state: State) -> dict[str, Any]:
    """Create a tenant in the store; 409 if the id exists (in the file or the store), 422 naming problems."""
    tenant_id, document, values = _document(body)
    check_store_tenant_id(tenant_id)
    check_callback_target(document, state.file_config())
    check_env_references(document, state.current().cfg)
    snapshot = state.store().snapshot()
    if _source(state, tenant_id) == "file" or tenant_id in snapshot.tenants:
        raise HTTPException(409, f"tenant {tenant_id!r} exists")
    state.check(with_secrets(with_tenant(snapshot, tenant_id, document), tenant_id, values))
    generation = state.store().create_tenant(tenant_id, document, values)
    if generation is None:  # created by another request since the check above
        raise HTTPException(409, f"tenant {tenant_id!r} exists")
    return {"id": tenant_id, "generation": generation}


@router.put("/tenants/{tenant_id}")
def replace_tenant(tenant_id: str, body: TenantWrite, state: State) -> dict[str, Any]:
    """Replace a store tenant's document (limits, prices, routes, keys, callback, CORS); file tenants
    change in the file (409). Secrets already stored stay; values given here are added."""
    if _source(state, tenant_id) == "file":
        raise HTTPException(409, f"tenant {tenant_id!r} is defined in the config file: change it there")
    snapshot = state.store().snapshot()
    stored = snapshot.tenants.get(tenant_id)
    if stored is None or stored.document is None:
        raise HTTPException(404, f"no stored tenant {tenant_id!r}")
    _, document, values = _document(body, tenant_id, stored.document)
    check_callback_target(document, state.file_config())
    check_env_references(document, state.current().cfg)
    state.check(with_secrets(with_tenant(snapshot, tenant_id, document), tenant_id, values))
    return {"id": tenant_id, "generation": state.store().put_tenant(tenant_id, document, values)}


def _known(state: AdminState, tenant_id: str) -> None:
    tenancy = state.current()
    # A stored tenant left out (it does not validate) can still be disabled and fixed.
    if not any(t.id == tenant_id for t in tenancy.cfg.tenants) and tenant_id not in tenancy.quarantined:
        raise HTTPException(404, f"no tenant {tenant_id!r}")


@router.post("/tenants/{tenant_id}/disable")
def disable_tenant(tenant_id: str, state: State) -> dict[str, Any]:
    """Disable a tenant: authz refuses its keys (401) from the generation returned on."""
    _known(state, tenant_id)
    return {"id": tenant_id, "disabled": True, "generation": state.store().set_disabled(tenant_id, True)}


@router.post("/tenants/{tenant_id}/enable")
def enable_tenant(tenant_id: str, state: State) -> dict[str, Any]:
    """Enable a disabled tenant again."""
    _known(state, tenant_id)
    return {"id": tenant_id, "disabled": False, "generation": state.store().set_disabled(tenant_id, False)}


@router.post("/tenants/{tenant_id}/rotate-signing-secret")
def rotate_signing_secret(tenant_id: str, body: Rotation, state: State) -> dict[str, Any]:
    """A new seed-format (kid-less HS256) secret; the previous ones (the file's too) verify for `grace_s`.
    A generated secret is in this answer only, once."""
    _known(state, tenant_id)
    generated = body.secret is None
    value = str(uuid.uuid4()) if body.secret is None else body.secret.get_secret_value()
    remember_secrets([value])
    check_seed_secret(value, "secret")
    snapshot = state.store().snapshot()
    state.check(with_secrets(snapshot, tenant_id, {PURPOSE_SEED: value}))
    generation = state.store().rotate_secret(tenant_id, PURPOSE_SEED, value, body.grace_s, retire_file_seed=True)
    answer: dict[str, Any] = {"id": tenant_id, "generation": generation, "grace_s": body.grace_s}
    if generated:
        answer["secret"] = value
    return answer


@router.post("/tenants/{tenant_id}/rotate-webhook-secret")
def rotate_webhook_secret(tenant_id: str, body: Rotation, state: State) -> dict[str, Any]:
    """A new webhook secret: for `grace_s` every callback is signed with the old and the new one, so a
    receiver verifies whichever it holds while it switches. A generated secret is in this answer only."""
    _known(state, tenant_id)
    tc = next((t for t in state.current().cfg.tenants if t.id == tenant_id), None)
    if tc is None:
        raise HTTPException(409, f"tenant {tenant_id!r} does not validate: fix it (PUT) first")
    if tc.callback is None:
        raise HTTPException(409, f"tenant {tenant_id!r} has no callback")
    generated = body.secret is None
    value = ("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode() if body.secret is None
             else body.secret.get_secret_value())
    remember_secrets([value])
    _check_webhook_secret(value)
    snapshot = state.store().snapshot()
    state.check(with_secrets(snapshot, tenant_id, {PURPOSE_CALLBACK: value}, body.grace_s))
    generation = state.store().rotate_secret(tenant_id, PURPOSE_CALLBACK, value, body.grace_s)
    answer: dict[str, Any] = {"id": tenant_id, "generation": generation, "grace_s": body.grace_s}
    if generated:
        answer["secret"] = value
    return answer


@router.get("/status")
def status(state: State) -> dict[str, Any]:
    """The store's generation and the one this admin service last loaded."""
    current = state.source.current
    return {"store_generation": state.store().generation(),
            "loaded_generation": current.generation if current else None}
