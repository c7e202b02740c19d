"""Everything the issuer resolves once at start: secrets, database, signing keys, tenant limits."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from pydantic import SecretStr
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks.webhooks import Webhook

from dynaseal.config import ConfigError, DynasealConfig, IssuerConfig
from dynaseal.keys.signing_keystore import SigningKeyStore
from dynaseal.runtime.views import IssuerView, Runtime
from dynaseal.tenant_config import Limits
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


def _session_secret(view: IssuerView) -> SecretStr:
    secret = view.session_secret
    if len(secret.get_secret_value().encode()) < MIN_SECRET_BYTES:
        raise ConfigError(f"issuer session secret ({view.issuer.session_secret_env}) must be at least "
                          f"{MIN_SECRET_BYTES} bytes")
    return secret


def webhook_of(secret: SecretStr | None) -> Webhook | None:
    """The verifier of the tenant's callbacks (None without a secret); ConfigError if the secret is unusable."""
    return _webhook(secret)


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
    # Only the issuer's view: its tenant's limits and secrets, never another tenant's keys or secrets.
    view = Runtime.from_config(cfg).issuer()
    issuer = view.issuer
    tokens = SessionTokens(_session_secret(view), issuer.access_token_minutes, issuer.refresh_token_minutes)

    keystore = SigningKeyStore(view.issuer_dir)
    active = keystore.ensure()  # also (re)writes jwks.json, which authz reads

    url = database_url(cfg)
    engine = make_engine(url, issuer.sqlite_synchronous)
    upgrade_to_head(url, engine)
    sessions = make_sessions(engine)
    if issuer.demo_users:
        with sessions.begin() as db:
            created = ensure_demo_users(db, issuer.tenant)
        if created:
            log.info("created demo users", extra={"usernames": created})

    redis_url = view.redis_url
    log.info("issuer ready", extra={"tenant": issuer.tenant, "kid": active.kid,
                                    "database": engine.url.render_as_string(),  # password hidden
                                    "gateway_revocation": bool(redis_url)})
    return IssuerState(cfg=cfg, issuer=issuer, limits=view.limits, engine=engine, sessions=sessions,
                       keystore=keystore, tokens=tokens, webhook=_webhook(view.callback_secret),
                       redis_url=redis_url, callbacks=CallbackWriter(engine))
