"""`python -m admin_api [--config PATH] [--host H] [--port P]`: serve the admin API."""

from __future__ import annotations

import argparse
import sys

import uvicorn

from admin_api.service import build_app
from dynaseal.config import ConfigError, load_config
from dynaseal.logs import setup_logging


def main(argv: list[str] | None = None) -> int:
    """Load the config, build the app and serve it until interrupted; 2 on a config error."""
    parser = argparse.ArgumentParser(prog="python -m admin_api", description="Dynaseal admin API.")
    parser.add_argument("--config", help="config file (default: $DYNASEAL_CONFIG, ./dynaseal.yaml, bundled dev)")
    parser.add_argument("--host", help="bind address (default: gateway.host)")
    parser.add_argument("--port", type=int, help="bind port (default: gateway.ports.admin)")
    args = parser.parse_args(argv)
    setup_logging("admin")
    try:
        cfg = load_config(args.config)
        app = build_app(args.config)
    except ConfigError as exc:
        print(f"dynaseal admin: {exc}", file=sys.stderr)
        return 2
    # log_config=None keeps the redacting JSON handler for uvicorn's own lines; no access log (tokens in URLs
    # are not expected, but bodies carry secrets and are never logged either).
    uvicorn.run(app, host=args.host or cfg.gateway.host, port=args.port or cfg.gateway.ports.admin,
                log_level="warning", log_config=None, access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
