"""The admin FastAPI application: each room of the operator's API is a router included here."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from pydantic import SecretStr

ADMIN_PREFIX = "/admin/v1"


def create_app(admin_token: SecretStr, routers: list[APIRouter] | None = None) -> FastAPI:
    """The admin app: every router under `/admin/v1`, each route guarded by `auth.require_admin`."""
    app = FastAPI(title="Dynaseal admin API", version="0.1.0")
    app.state.admin_token = admin_token
    for router in routers or []:
        app.include_router(router, prefix=ADMIN_PREFIX)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, object]:
        # The config generation this process runs, when the app follows a tenant store.
        generation = getattr(app.state, "generation", None)
        return {"status": "ok"} if generation is None else {"status": "ok", "generation": generation()}

    return app
