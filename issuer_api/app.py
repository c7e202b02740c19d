"""The FastAPI application: routers for sessions, keys, callbacks and usage on one resolved state."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request

from dynaseal.config import DynasealConfig
from issuer_api import routes_callbacks, routes_demo, routes_keys, routes_usage, routes_user
from issuer_api.errors import install_error_handlers
from issuer_api.state import IssuerState, build_state

API_PREFIX = "/api/v1"


def create_app(cfg: DynasealConfig) -> FastAPI:
    """Build the issuer app; raises ConfigError at once if the config cannot serve (not on first request)."""
    state = build_state(cfg)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        state.close()

    app = FastAPI(
        title="Dynaseal issuer API",
        description="Seed-compatible business backend: log in, mint and revoke dynamic keys, "
                    "receive the gateway's signed usage callbacks. Every route is also served "
                    f"under `{API_PREFIX}` (the original client's layout).",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.issuer = state
    install_error_handlers(app)
    routers = [module.router for module in (routes_user, routes_keys, routes_callbacks, routes_usage)]
    routers.append(_health_router())
    for router in routers:
        app.include_router(router)
    # The original client's layout (`backend_url = .../api/v1`): the same routes again, kept out
    # of the OpenAPI document so it lists each operation once.
    for router in routers:
        app.include_router(router, prefix=API_PREFIX, include_in_schema=False)
    app.include_router(routes_callbacks.root_router)
    app.include_router(routes_demo.router)  # the browser demo page (dev configs only)
    return app


def _health_router() -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz", summary="Liveness")
    def healthz(request: Request) -> dict[str, object]:
        """The process is up and serving (and the config generation it runs, when it follows the store)."""
        generation = getattr(request.app.state, "generation", None)
        return {"status": "ok"} if generation is None else {"status": "ok", "generation": generation}

    return router


def issuer_state(app: FastAPI) -> IssuerState:
    """The resolved state of an app built by `create_app` (for tests and tooling)."""
    state: IssuerState = app.state.issuer
    return state
