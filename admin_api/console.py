"""The console's rooms of the admin API, ready to add to the app: usage, refusals, the DLQ, revocations, and
the console's pages (the admin service's entry point calls both)."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from admin_api import routes_operations, routes_usage
from admin_api.console_context import ConsoleContext, install_console
from dynaseal.runtime.views import Runtime


def console_routers() -> list[APIRouter]:
    """The routers to pass to `create_app` beside the tenants' ones."""
    return [routes_usage.router, routes_operations.router]


def add_console(app: FastAPI, runtime: Runtime) -> None:
    """Give those routers the usage store, the broker and Redis of this config; serve the console at /console/."""
    install_console(app, ConsoleContext.from_runtime(runtime))
