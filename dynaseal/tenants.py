"""The runtime tenant registry: config resolved into key objects, secrets and limits.

Built once per config (re)load and never mutated, so a request sees one consistent view.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import jwt
from pydantic import SecretStr

from dynaseal.config import (
    KID_PATTERN,
    CallbackConfig,
    ConfigError,
    DynasealConfig,
    Limits,
    TenantConfig,
    expand_path,
)

log = logging.getLogger("dynaseal.tenants")

_ALG_BY_JWK = {("OKP", "Ed25519"): "EdDSA", ("EC", "P-256"): "ES256"}


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One key that can verify a tenant's dynamic keys, its algorithm pinned."""

    kid: str | None
    alg: str
    key: Any = field(repr=False)


@dataclass(frozen=True, slots=True)
class Tenant:
    """A tenant as the hot path needs it."""

    id: str
    name: str
    keys_by_kid: Mapping[str, VerificationKey]
    seed_key: VerificationKey | None
    limits: Limits
    provider_key: SecretStr | None
    callback: CallbackConfig | None
    callback_secret: SecretStr | None
    jwks_url: str | None = None

    def with_keys(self, keys: list[VerificationKey]) -> Tenant:
        """A copy whose kid keys are this tenant's inline/file keys plus `keys` (a refreshed JWKS)."""
        merged = {**self.keys_by_kid, **{k.kid: k for k in keys if k.kid is not None}}
        return replace(self, keys_by_kid=MappingProxyType(merged))

    def allows_model(self, model: str) -> bool:
        """Whether the tenant's allowlist admits a model."""
        return "*" in self.limits.models or model in self.limits.models


@dataclass(frozen=True, slots=True)
class Registry:
    """All tenants by id, plus gateway-wide values the checks need."""

    tenants: Mapping[str, Tenant]
    audience: str
    leeway_s: int
    default_provider_key: SecretStr | None
    # Client headers the provider may see beyond the fixed allowlist (lowercase).
    forward_headers: frozenset[str] = frozenset()

    def get(self, tenant_id: str) -> Tenant | None:
        """The tenant with this id, if any."""
        return self.tenants.get(tenant_id)

    def with_tenant(self, tenant: Tenant) -> Registry:
        """A copy with one tenant replaced."""
        return replace(self, tenants=MappingProxyType({**self.tenants, tenant.id: tenant}))


def _env_secret(name: str | None, what: str, errors: list[str]) -> SecretStr | None:
    if not name:
        return None
    value = os.environ.get(name)
    if not value:
        errors.append(f"{what}: environment variable {name} is not set")
        return None
    return SecretStr(value)


def jwk_to_key(jwk_dict: Mapping[str, Any], pinned_alg: str | None = None) -> VerificationKey:
    """Parse one public JWK; the algorithm comes from the config or the key type, never the token."""
    if any(k in jwk_dict for k in ("d", "p", "q", "k")):
        raise ValueError("a verification JWK must be public (it carries private or symmetric material)")
    derived = _ALG_BY_JWK.get((jwk_dict.get("kty"), jwk_dict.get("crv")))
    if derived is None:
        raise ValueError(f"unsupported key type {jwk_dict.get('kty')}/{jwk_dict.get('crv')}")
    if pinned_alg and pinned_alg != derived:
        raise ValueError(f"alg {pinned_alg} does not match key type (expects {derived})")
    if jwk_dict.get("alg") not in (None, derived):
        raise ValueError(f"JWK alg {jwk_dict.get('alg')} does not match its key type")
    kid = jwk_dict.get("kid")
    if kid is not None and not KID_PATTERN.match(str(kid)):
        raise ValueError("kid must match [A-Za-z0-9._-]{1,64}")
    return VerificationKey(kid, derived, jwt.PyJWK(dict(jwk_dict), algorithm=derived).key)


def parse_jwks(document: Mapping[str, Any]) -> list[VerificationKey]:
    """Parse a JWKS document; every key must carry a kid."""
    keys = []
    for jwk_dict in document.get("keys", []):
        key = jwk_to_key(jwk_dict)
        if key.kid is None:
            raise ValueError("every JWKS key needs a kid")
        keys.append(key)
    return keys


def _tenant_keys(cfg: DynasealConfig, tc: TenantConfig, errors: list[str]) -> list[VerificationKey]:
    keys: list[VerificationKey] = []
    for kc in tc.keys:
        where = f"tenant {tc.id} key {kc.kid or '(seed)'}"
        if kc.alg == "HS256":
            secret = _env_secret(kc.secret_env, where, errors)
            if secret is not None:
                keys.append(VerificationKey(kc.kid, "HS256", secret.get_secret_value().encode()))
            continue
        try:
            parsed = jwk_to_key(kc.public_jwk or {}, kc.alg)
            keys.append(VerificationKey(kc.kid, parsed.alg, parsed.key))
        except (ValueError, jwt.PyJWKError) as exc:
            errors.append(f"{where}: {exc}")
    if tc.jwks_file:
        path = expand_path(tc.jwks_file, cfg)
        try:
            keys.extend(parse_jwks(json.loads(path.read_text())))
        except FileNotFoundError:
            errors.append(f"tenant {tc.id}: jwks_file {path} does not exist")
        except (ValueError, OSError, jwt.PyJWKError) as exc:
            errors.append(f"tenant {tc.id}: jwks_file {path}: {exc}")
    if tc.jwks_url:
        from dynaseal.remote_jwks import fetch_jwks

        try:
            keys.extend(fetch_jwks(tc.jwks_url))
        except Exception as exc:  # an unreachable JWKS must not stop start-up: its kids are refused until it answers
            log.warning("jwks_url fetch failed at load; will retry on an unknown kid",
                        extra={"tenant": tc.id, "error": str(exc)})
    return keys


def build_registry(cfg: DynasealConfig) -> Registry:
    """Resolve every tenant's keys and secrets; raise ConfigError listing all problems."""
    errors: list[str] = []
    tenants: dict[str, Tenant] = {}
    for tc in cfg.tenants:
        keys = _tenant_keys(cfg, tc, errors)
        upstream = tc.upstream
        tenants[tc.id] = Tenant(
            id=tc.id,
            name=tc.name or tc.id,
            keys_by_kid=MappingProxyType({k.kid: k for k in keys if k.kid is not None}),
            seed_key=next((k for k in keys if k.kid is None), None),
            limits=tc.limits,
            provider_key=_env_secret(upstream.api_key_env if upstream else None,
                                     f"tenant {tc.id} upstream", errors),
            callback=tc.callback,
            callback_secret=_env_secret(tc.callback.secret_env if tc.callback else None,
                                        f"tenant {tc.id} callback", errors),
            jwks_url=tc.jwks_url,
        )
    default_key = _env_secret(cfg.gateway.upstream.api_key_env, "gateway upstream", errors)
    if errors:
        raise ConfigError("invalid tenant configuration:\n  - " + "\n  - ".join(errors))
    return Registry(MappingProxyType(tenants), cfg.gateway.audience, cfg.gateway.leeway_s, default_key,
                    frozenset(h.lower() for h in cfg.gateway.upstream.forward_headers))
