"""`GET /demo/`: the browser demo page (dev configs only, `issuer.demo_users: true`).

The page is static: it logs in here, gets a key bound to a non-extractable key it keeps in IndexedDB, and
calls the gateway cross-origin with the JavaScript client (clients/js/src, served from a source checkout
under /demo/client/). Nothing here is a secret: the page holds no provider key and no signing key.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse

from issuer_api.deps import StateDep
from issuer_api.errors import ApiError, IssuerError

router = APIRouter(tags=["demo"], include_in_schema=False)
PAGE_DIR = Path(__file__).resolve().parent / "static" / "demo"
CLIENT_DIR = Path(__file__).resolve().parent.parent / "clients" / "js" / "src"
# Only plain file names, never a path: nothing outside the two folders can be named.
_FILE = re.compile(r"^[a-z0-9][a-z0-9-]*\.(js|css|html)$")
_TYPES = {"js": "text/javascript", "css": "text/css", "html": "text/html"}


def _file(state: StateDep, folder: Path, name: str) -> FileResponse:
    if not state.issuer.demo_users or not _FILE.match(name) or not (folder / name).is_file():
        raise ApiError(404, IssuerError.NOT_FOUND, "no such demo file")
    # no-store: a page reloaded after an upgrade never mixes old and new modules.
    return FileResponse(folder / name, media_type=_TYPES[name.rsplit(".", 1)[1]],
                        headers={"cache-control": "no-store", "x-content-type-options": "nosniff"})


@router.get("/demo/")
def demo_page(state: StateDep) -> FileResponse:
    """The demo page."""
    return _file(state, PAGE_DIR, "index.html")


@router.get("/demo/config.json")
def demo_config(state: StateDep) -> dict[str, Any]:
    """Where the page finds the gateway (its public URL, else Envoy's local port)."""
    if not state.issuer.demo_users:
        raise ApiError(404, IssuerError.NOT_FOUND, "no such demo file")
    gw = state.cfg.gateway
    base = gw.public_url or f"http://{gw.host}:{gw.ports.envoy}"
    return {"gateway": f"{base.rstrip('/')}/v1", "tenant": state.tenant_id}


@router.get("/demo/client/{name}")
def demo_client(name: str, state: StateDep) -> FileResponse:
    """The JavaScript client's modules (from the source checkout)."""
    return _file(state, CLIENT_DIR, name)


@router.get("/demo/{name}")
def demo_asset(name: str, state: StateDep) -> FileResponse:
    """The page's own script and style."""
    return _file(state, PAGE_DIR, name)
