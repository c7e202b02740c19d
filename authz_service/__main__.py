"""`python -m authz_service` / `dynaseal authz`: run the ext_authz gRPC server."""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from authz_service.server import AuthzOptions, AuthzServer
from dynaseal.config import ConfigError
from dynaseal.logs import setup_logging


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and serve until stopped."""
    parser = argparse.ArgumentParser(prog="dynaseal authz", description=__doc__)
    parser.add_argument("--config", help="config file (default: $DYNASEAL_CONFIG or dynaseal.yaml)")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--metrics-port", type=int)
    parser.add_argument("--server", choices=("native", "grpcio"),
                        help="gRPC transport (default: the config's authz.server)")
    args = parser.parse_args(argv)
    setup_logging("authz")
    runner: Callable[[Coroutine[Any, Any, None]], None] = asyncio.run
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a declared dependency on POSIX
        pass
    try:
        server = AuthzServer(AuthzOptions(args.config, args.host, args.port, args.metrics_port, args.server))
    except ConfigError as exc:
        print(f"dynaseal authz: {exc}", file=sys.stderr)
        return 2
    # Everything loaded so far lives as long as the process: move it out of the collector's way, so
    # collections triggered by per-request garbage stay short (a full one was ~35 ms here: a p99 spike).
    gc.collect()
    gc.freeze()
    runner(server.serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
