"""The admin service as `dynaseal up` runs it: the operator's API over the tenant store, and the seed's
backend registration routes that Envoy sends to it from the gateway's port."""

from __future__ import annotations

import os
import threading

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import SecretStr

from admin_api import routes_seed, routes_tenants
from admin_api.app import create_app
from admin_api.body_limit import BodyLimit
from admin_api.console import add_console, console_routers
from admin_api.console_context import follow_max_ttls
from admin_api.state import AdminState
from admin_api.throttle import Throttle
from dynaseal.config import ConfigError, DynasealConfig, config_environment
from dynaseal.runtime.views import Runtime
from dynaseal.secrets import SecretResolver
from dynaseal.tenancy.source import TenancySource, follow_generation

# The seed's backend account (user1:user1, its bcrypt hash as the seed ships it) for the demo tenant.
DEMO_ACCOUNT = ("user1@example.com", "user1", "$2b$12$QFk6uHDBM5s69uSXrchivOC5SbpTUGV4tjmWz0nRvPSiMt.WAZVhC")
MIN_TOKEN_CHARS = 16


def admin_token(cfg: DynasealConfig) -> SecretStr:
    """The operator token from `admin.token_env` or `admin.token_file`; ConfigError if missing or short."""
    admin = cfg.admin
    if admin is None:
        raise ConfigError("the config has no `admin` section: the admin API has no token and no store")
    resolver = SecretResolver(config_environment(cfg))  # the env_file's values too
    token = resolver.reference(admin.token_env if not admin.token_file else None, admin.token_file, "admin token")
    if resolver.errors or token is None:
        raise ConfigError("invalid admin configuration:\n  - " + "\n  - ".join(resolver.errors or ["no token"]))
    if len(token.get_secret_value()) < MIN_TOKEN_CHARS:
        raise ConfigError(f"invalid admin configuration:\n  - admin token: at least {MIN_TOKEN_CHARS} characters")
    return token


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    """422 naming where and what, never echoing the input: a request body may carry secret values."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    problems = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in errors]
    return JSONResponse({"detail": {"message": "invalid request", "problems": problems}}, status_code=422)


def build_app(config_path: str | os.PathLike[str] | None, extra_routers: list[APIRouter] | None = None,
              *, follow: bool = True) -> FastAPI:
    """The admin app of one config file (raises ConfigError): tenants, status, the seed's registration."""
    source = TenancySource(config_path)
    tenancy = source.load()
    source.accept(tenancy)
    cfg = tenancy.cfg
    app = create_app(admin_token(cfg), [routes_tenants.router, *console_routers(), *(extra_routers or [])])
    # Usage, refusals, the DLQ and revocations, and the console at /console/ (admin_api.console).
    add_console(app, Runtime.from_config(cfg))
    state = AdminState(source)
    app.state.admin = state
    app.state.generation = lambda: source.current.generation if source.current else 0
    # A store tenant's keys may live longer than any file tenant's: a revocation marker must outlive them.
    follow_max_ttls(app, lambda: {t.id: t.limits.max_ttl for t in source.current.cfg.tenants} if source.current else {})
    app.include_router(routes_seed.router)
    app.state.login_throttle = Throttle()  # 10 failed logins per account per 5 minutes
    app.state.create_throttle = Throttle(max_attempts=30, window_s=3600.0)  # api_key/create per account
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_middleware(BodyLimit)  # before any parser holds a body (the seed's routes come from the public port)
    if cfg.admin is not None and cfg.admin.demo_accounts and cfg.issuer is not None:
        email, username, password_hash = DEMO_ACCOUNT
        state.store().add_account(email, username, password_hash, cfg.issuer.tenant)
    if follow:
        follow_generation(source, threading.Event())
    return app
