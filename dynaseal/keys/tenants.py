"""The runtime tenant registry: config resolved into key objects, secrets and limits.

Built once per config (re)load and never mutated, so a request sees one consistent view.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import jwt
from pydantic import SecretStr

from dynaseal.config import ConfigError, DynasealConfig, config_environment, expand_path
from dynaseal.money.pricing import Price
from dynaseal.secrets import env_secret, referenced_secret
from dynaseal.tenant_config import KID_PATTERN, CallbackConfig, Limits, TenantConfig, unbounded_media_warning

if TYPE_CHECKING:
    from dynaseal.keys.remote_jwks import RemoteJwks
    from dynaseal.routing.routes import RouteTable

log = logging.getLogger("dynaseal.config")
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
    # Only what authz reads of it (include_content); its signing secret is the consumer's, never resolved here.
    callback: CallbackConfig | None
    jwks_url: str | None = None
    # The inline and jwks_file keys: what stays when the remote set is replaced.
    local_keys_by_kid: Mapping[str, VerificationKey] = field(default_factory=lambda: MappingProxyType({}))
    # The price table (upstream.prices), its currency, and whether a model without a price is refused.
    prices: Mapping[str, Price] = field(default_factory=lambda: MappingProxyType({}))
    currency: str = "USD"
    refuse_unpriced: bool = False
    # Browser origins allowed to use the tenant's keys (tenant `cors.origins`; none = no page may).
    cors_origins: frozenset[str] = frozenset()
    # Every seed-format (kid-less HS256) secret, seed_key first: several while one is being rotated.
    seed_keys: tuple[VerificationKey, ...] = ()

    def with_remote_keys(self, keys: tuple[VerificationKey, ...]) -> Tenant:
        """A copy whose kid keys are the local keys plus exactly `keys` (the latest remote JWKS).

        A configured key wins over a remote one with the same kid: the tenant's server cannot
        override what the operator pinned.
        """
        remote = {k.kid: k for k in keys if k.kid is not None}
        return replace(self, keys_by_kid=MappingProxyType({**remote, **self.local_keys_by_kid}))

    def allows_model(self, model: str) -> bool:
        """Whether the tenant's allowlist admits a model."""
        return "*" in self.limits.models or model in self.limits.models

    def price_of(self, model: str) -> Price | None:
        """The model's price, if the tenant's table has one."""
        return self.prices.get(model)


@dataclass(frozen=True, slots=True)
class Registry:
    """All tenants by id, plus gateway-wide values the checks need."""

    tenants: Mapping[str, Tenant]
    audience: str
    leeway_s: int
    default_provider_key: SecretStr | None
    # Client headers the provider may see beyond the fixed allowlist (lowercase).
    forward_headers: frozenset[str] = frozenset()
    # The shared store of remote JWKS and the generation of it this registry reflects.
    remote_jwks: RemoteJwks | None = field(default=None, compare=False, repr=False)
    remote_generation: int = -1
    # gateway.public_url: the origin DPoP proofs must name (None = the one Envoy saw).
    public_url: str | None = None
    # Tenants' routes to named upstreams (dynaseal.routing.routes); None = every request to the one upstream.
    routes: RouteTable | None = None

    def get(self, tenant_id: str) -> Tenant | None:
        """The tenant with this id, if any."""
        return self.tenants.get(tenant_id)

    def with_remote_keys(self, keys_by_tenant: Mapping[str, tuple[VerificationKey, ...]],
                         generation: int) -> Registry:
        """A copy whose jwks_url tenants carry exactly these remote keys (none for a tenant not named)."""
        tenants = {tid: t.with_remote_keys(keys_by_tenant.get(tid, ())) if t.jwks_url else t
                   for tid, t in self.tenants.items()}
        return replace(self, tenants=MappingProxyType(tenants), remote_generation=generation)


def _env_secret(name: str | None, what: str, errors: list[str], env: Mapping[str, str]) -> SecretStr | None:
    # One resolver for every secret: it also tells the redactor the value.
    return env_secret(name, what, errors, env)


def jwk_to_key(jwk_dict: Mapping[str, Any], pinned_alg: str | None = None) -> VerificationKey:
    """Parse one public JWK; the algorithm comes from the config or the key type, never the token."""
    if any(k in jwk_dict for k in ("d", "p", "q", "k")):
        raise ValueError("a verification JWK must be public (it carries private or symmetric material)")
    derived = _ALG_BY_JWK.get((str(jwk_dict.get("kty")), str(jwk_dict.get("crv"))))
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
    members = document.get("keys", []) if isinstance(document, Mapping) else None
    # A file or endpoint may hold any JSON: a wrong shape is a named error, never an AttributeError.
    if not isinstance(members, list) or not all(isinstance(member, Mapping) for member in members):
        raise ValueError("a JWKS is an object whose `keys` is a list of JWK objects")
    keys = []
    for jwk_dict in members:
        key = jwk_to_key(jwk_dict)
        if key.kid is None:
            raise ValueError("every JWKS key needs a kid")
        keys.append(key)
    return keys


def _tenant_keys(cfg: DynasealConfig, tc: TenantConfig, errors: list[str],
                 env: Mapping[str, str]) -> list[VerificationKey]:
    keys: list[VerificationKey] = []
    for kc in tc.keys:
        where = f"tenant {tc.id} key {kc.kid or '(seed)'}"
        if kc.alg == "HS256":
            secret = referenced_secret(kc.secret_env, kc.secret_file, where, errors, env)
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
    return keys


def _prices(tc: TenantConfig) -> Mapping[str, Price]:
    upstream = tc.upstream
    if upstream is None:
        return MappingProxyType({})
    return MappingProxyType({
        model: Price(upstream.currency, p.input, p.input if p.cached_input is None else p.cached_input,
                     p.output, p.output if p.reasoning is None else p.reasoning, p.cache_write)
        for model, p in upstream.prices.items()})


def build_registry(cfg: DynasealConfig, remote_jwks: RemoteJwks | None = None, *,
                   fetch_new_jwks: bool = True, env: Mapping[str, str] | None = None) -> Registry:
    """Resolve every tenant's keys and the secrets authz uses (tenants' HS secrets, provider keys) in `env`
    (default: `config_environment(cfg)`); raise ConfigError listing all problems.

    Remote JWKS live in `remote_jwks` (a private store if none is given), which is told which
    tenants to follow; with `fetch_new_jwks` the ones never fetched are fetched now (blocking:
    start-up only; a server reloading on its event loop leaves them to the scheduled refresh).
    """
    from dynaseal.keys.remote_jwks import RemoteJwks

    env = config_environment(cfg) if env is None else env
    errors: list[str] = []
    tenants: dict[str, Tenant] = {}
    for tc in cfg.tenants:
        if (warning := unbounded_media_warning(tc)) is not None:
            log.warning(warning, extra={"tenant": tc.id})
        keys = _tenant_keys(cfg, tc, errors, env)
        local_keys = MappingProxyType({k.kid: k for k in keys if k.kid is not None})
        upstream = tc.upstream
        tenants[tc.id] = Tenant(
            id=tc.id,
            name=tc.name or tc.id,
            keys_by_kid=local_keys,
            seed_key=next((k for k in keys if k.kid is None), None),
            seed_keys=tuple(k for k in keys if k.kid is None),
            limits=tc.limits,
            provider_key=_env_secret(upstream.api_key_env if upstream else None,
                                     f"tenant {tc.id} upstream", errors, env),
            callback=tc.callback,
            jwks_url=tc.jwks_url,
            local_keys_by_kid=local_keys,
            prices=_prices(tc),
            currency=upstream.currency if upstream else "USD",
            refuse_unpriced=upstream is not None and upstream.unpriced == "refuse",
            cors_origins=frozenset(tc.cors.origins) if tc.cors else frozenset(),
        )
    default_key = _env_secret(cfg.gateway.upstream.api_key_env, "gateway upstream", errors, env)
    from dynaseal.routing.routes import build_route_table  # the policy layer's table, built with the registry

    routes = build_route_table(cfg, errors, env)
    if errors:
        raise ConfigError("invalid tenant configuration:\n  - " + "\n  - ".join(errors))
    store = remote_jwks if remote_jwks is not None else RemoteJwks()
    store.track({tc.id: (tc.jwks_url, tc.jwks_refresh_s or cfg.gateway.jwks_refresh_s)
                 for tc in cfg.tenants if tc.jwks_url})
    if fetch_new_jwks:
        store.fetch_untried()
    registry = Registry(MappingProxyType(tenants), cfg.gateway.audience, cfg.gateway.leeway_s, default_key,
                        frozenset(h.lower() for h in cfg.gateway.upstream.forward_headers), remote_jwks=store,
                        public_url=cfg.gateway.public_url,
                        routes=routes if routes.routed_tenants or routes.provider_headers else None)
    return store.apply(registry)
