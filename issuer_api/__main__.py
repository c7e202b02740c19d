"""Command line: `python -m issuer_api [--config PATH] [--host H] [--port P]`."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from typing import Any

import uvicorn

from dynaseal.config import ConfigError, DynasealConfig, load_config
from dynaseal.logs import setup_logging


def build_parser() -> argparse.ArgumentParser:
    """The CLI's arguments; host and port default to the config's gateway host and issuer port."""
    parser = argparse.ArgumentParser(prog="python -m issuer_api",
                                     description="Dynaseal issuer API (business backend).")
    parser.add_argument("--config",
                        help="config file (default: $DYNASEAL_CONFIG, ./dynaseal.yaml, bundled dev)")
    parser.add_argument("--host", help="bind address (default: gateway.host)")
    parser.add_argument("--port", type=int, help="bind port (default: gateway.ports.issuer)")
    return parser


def server_options(cfg: DynasealConfig) -> dict[str, Any]:
    """uvicorn settings from the config: forwarded headers are believed only from named proxies.

    uvicorn's default trusts X-Forwarded-For from 127.0.0.1, so anyone on the host could rotate
    that header to dodge the login throttle; with no `issuer.trusted_proxies` it is ignored.
    """
    proxies = list(cfg.issuer.trusted_proxies) if cfg.issuer else []
    # log_config=None keeps our JSON, redacting root handler for uvicorn's own lines too.
    return {"proxy_headers": bool(proxies), "forwarded_allow_ips": proxies or None,
            "log_level": "warning", "log_config": None, "access_log": False}


def main(argv: list[str] | None = None) -> int:
    """Load the config, build the app and serve it until interrupted; 2 on a config error."""
    args = build_parser().parse_args(argv)
    setup_logging("issuer_api")
    # Alembic narrates every plugin and step at INFO; only its problems matter in the service log.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        cfg = load_config(args.config)
        # Imported late so `--help` stays fast and a config error is reported before heavy imports.
        from issuer_api.app import create_app

        app = create_app(cfg)
        # Its tenant as the tenant store changes it (limits, webhook secret), without a restart.
        from issuer_api.tenant_follow import follow_tenant

        follow_tenant(app, args.config, threading.Event())
    except ConfigError as exc:
        first, *rest = str(exc).splitlines() or [""]
        print(f"issuer_api: config error: {first}" + (f" (+{len(rest)} more lines)" if rest else ""),
              file=sys.stderr)
        for line in rest:
            print(line, file=sys.stderr)
        return 2
    host = args.host or cfg.gateway.host
    port = args.port if args.port is not None else cfg.gateway.ports.issuer
    print(f"issuer_api: serving tenant {cfg.issuer.tenant if cfg.issuer else '?'} on http://{host}:{port}",
          flush=True)
    uvicorn.run(app, host=host, port=port, **server_options(cfg))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
