"""Command line: `python -m issuer_api [--config PATH] [--host H] [--port P]`."""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn

from dynaseal.config import ConfigError, load_config
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
    # log_config=None keeps our JSON, redacting root handler for uvicorn's own lines too.
    uvicorn.run(app, host=host, port=port, log_level="warning", log_config=None, access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
