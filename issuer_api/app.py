"""The FastAPI application: routers for sessions, keys, callbacks and usage on one resolved state."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from dynaseal.config import DynasealConfig
from issuer_api import routes_callbacks, routes_keys, routes_usage, routes_user
from issuer_api.errors import install_error_handlers
from issuer_api.state import IssuerState, build_state


def create_app(cfg: DynasealConfig) -> FastAPI:
    """Build the issuer app; raises ConfigError at once if the config cannot serve (not on first request)."""
    state = build_state(cfg)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        state.engine.dispose()

    app = FastAPI(
        title="Dynaseal issuer API",
        description="Seed-compatible business backend: log in, mint and revoke dynamic keys, "
                    "receive the gateway's signed usage callbacks.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.issuer = state
    install_error_handlers(app)
    for module in (routes_user, routes_keys, routes_callbacks, routes_usage):
        app.include_router(module.router)

    @app.get("/healthz", tags=["health"], summary="Liveness")
    def healthz() -> dict[str, str]:
        """The process is up and serving."""
        return {"status": "ok"}

    return app


def issuer_state(app: FastAPI) -> IssuerState:
    """The resolved state of an app built by `create_app` (for tests and tooling)."""
    state: IssuerState = app.state.issuer
    return state
