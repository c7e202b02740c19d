"""`python -m log_shipper` / `dynaseal shipper`: ship Envoy's access log to Kafka until SIGTERM."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from prometheus_client import start_http_server

from dynaseal.config import ConfigError
from dynaseal.logs import setup_logging
from dynaseal.runtime.views import load_runtime
from dynaseal.tenancy.source import TenancySource, follow_generation
from dynaseal.usage import kafka_io
from log_shipper.shipper import Shipper, ShipperOptions

# The consumer's own variable: both sides name the same group.
GROUP_ENV = "DYNASEAL_CONSUMER_GROUP"


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = argparse.ArgumentParser(prog="dynaseal shipper", description=__doc__)
    parser.add_argument("--config", help="config file (default: $DYNASEAL_CONFIG or dynaseal.yaml)")
    parser.add_argument("--access-log", type=Path, help="default: <data_dir>/envoy/access.log")
    parser.add_argument("--checkpoint", type=Path, help="default: <data_dir>/shipper/checkpoint.json")
    parser.add_argument("--metrics-port", type=int, help="default: ports.shipper_metrics")
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP, config)")
    parser.add_argument("--group-id", default=os.environ.get(GROUP_ENV) or kafka_io.DEFAULT_GROUP_ID,
                        help=f"the consumer group whose commits let events be forgotten (default: ${GROUP_ENV} "
                             "or %(default)s)")
    parser.add_argument("--access-log-max-bytes", type=int,
                        help="rotate the access log past this size, 0 = never (default: gateway.access_log_max_bytes)")
    parser.add_argument("--envoy-admin", help="Envoy's admin URL, for reopen_logs (default: http://host:envoy_admin)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and ship until stopped."""
    args = build_parser().parse_args(argv)
    setup_logging("shipper")
    # kafka-python narrates every connection at INFO.
    logging.getLogger("kafka").setLevel(logging.WARNING)
    try:
        runtime = load_runtime(args.config)
        view = runtime.shipper()
    except ConfigError as exc:
        print(f"dynaseal shipper: {exc}", file=sys.stderr)
        return 2
    cfg = runtime.cfg
    shipper = Shipper(ShipperOptions(
        access_log=args.access_log or view.access_log,
        checkpoint_path=args.checkpoint or view.checkpoint,
        bootstrap=args.bootstrap or view.kafka_bootstrap,
        group_id=args.group_id,
        max_log_bytes=view.max_log_bytes if args.access_log_max_bytes is None else args.access_log_max_bytes,
        envoy_admin=args.envoy_admin or view.envoy_admin,
    ))
    try:
        start_http_server(args.metrics_port or cfg.gateway.ports.shipper_metrics, addr=cfg.gateway.host)
    except OSError as exc:
        print(f"dynaseal shipper: cannot serve metrics: {exc}", file=sys.stderr)
        return 2

    # The shipper holds no tenant data, but says which config generation the stack runs, as every service.
    tenancy = TenancySource(args.config)
    stop_watch = threading.Event()
    try:
        tenancy.accept(tenancy.load())
    except ConfigError as exc:
        print(f"dynaseal shipper: {exc}", file=sys.stderr)
        return 2
    follow_generation(tenancy, stop_watch)

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop_watch.set()
        shipper.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    shipper.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
