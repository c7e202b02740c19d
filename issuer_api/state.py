"""Everything the issuer resolves once at start: secrets, database, signing keys, tenant limits."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import SecretStr
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks.webhooks import Webhook

from dynaseal.config import ConfigError, DynasealConfig, IssuerConfig, Limits
from dynaseal.signing_keystore import SigningKeyStore
from dynaseal.tenants import build_registry
from issuer_api.callback_writer import CallbackWriter
from issuer_api.login_limiter import LoginLimiter
from issuer_api.migrate import upgrade_to_head
from issuer_api.sessions import MIN_SECRET_BYTES, SessionTokens
from issuer_api.store import database_url, make_engine, make_sessions
from issuer_api.users import ensure_demo_users

log = logging.getLogger("issuer_api")


@dataclass(frozen=True)
class IssuerState:
    """The issuer's runtime view of its config, shared by every request."""

    cfg: DynasealConfig
    issuer: IssuerConfig
    limits: Limits
    engine: Engine
    sessions: sessionmaker[Session]
    keystore: SigningKeyStore
    tokens: SessionTokens
    webhook: Webhook | None = field(repr=False)
    redis_url: str | None
    callbacks: CallbackWriter
    limiter: LoginLimiter = field(default_factory=LoginLimiter)

    def close(self) -> None:
        """Finish queued callback writes and release the database."""
        self.callbacks.close()
        self.engine.dispose()

    @property
    def tenant_id(self) -> str:
        """The tenant this issuer mints keys for."""
        return self.issuer.tenant


def _session_secret(issuer: IssuerConfig) -> str:
    secret = os.environ.get(issuer.session_secret_env, "")
    if not secret:
        raise ConfigError(f"issuer.session_secret_env: environment variable {issuer.session_secret_env} "
                          "is not set")
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise ConfigError(f"issuer session secret ({issuer.session_secret_env}) must be at least "
                          f"{MIN_SECRET_BYTES} bytes")
    return secret


def _webhook(secret: SecretStr | None) -> Webhook | None:
    if secret is None:
        return None
    try:
        return Webhook(secret.get_secret_value())
    except Exception as exc:  # binascii.Error, EmptyWebhookSecretError, ...
        raise ConfigError(f"the tenant's callback secret is not a valid Standard Webhooks secret "
                          f"(whsec_<base64>): {type(exc).__name__}") from None


def build_state(cfg: DynasealConfig) -> IssuerState:
    """Resolve secrets, open and migrate the database, ensure a signing key; raise ConfigError if unusable."""
    issuer = cfg.issuer
    if issuer is None:
        raise ConfigError("the config has no `issuer` section: the issuer API has nothing to mint for")
    tokens = SessionTokens(_session_secret(issuer), issuer.access_token_minutes, issuer.refresh_token_minutes)

    keystore = SigningKeyStore(Path(cfg.gateway.data_dir) / "issuer")
    active = keystore.ensure()  # also (re)writes jwks.json, which the registry below reads
    tenant = build_registry(cfg).get(issuer.tenant)
    assert tenant is not None  # the config validator guarantees issuer.tenant exists

    url = database_url(cfg)
    engine = make_engine(url)
    upgrade_to_head(url, engine)
    sessions = make_sessions(engine)
    if issuer.demo_users:
        with sessions.begin() as db:
            created = ensure_demo_users(db, issuer.tenant)
        if created:
            log.info("created demo users", extra={"usernames": created})

    redis_url = cfg.gateway.redis_url or os.environ.get("REDIS_URL") or None
    log.info("issuer ready", extra={"tenant": issuer.tenant, "kid": active.kid,
                                    "database": engine.url.render_as_string(),  # password hidden
                                    "gateway_revocation": bool(redis_url)})
    return IssuerState(cfg=cfg, issuer=issuer, limits=tenant.limits, engine=engine, sessions=sessions,
                       keystore=keystore, tokens=tokens, webhook=_webhook(tenant.callback_secret),
                       redis_url=redis_url, callbacks=CallbackWriter(engine))
