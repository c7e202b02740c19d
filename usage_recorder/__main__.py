"""`python -m usage_recorder`: keep the usage store current from the usage topic until SIGTERM."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
from types import FrameType

from prometheus_client import start_http_server

from dynaseal.config import ConfigError
from dynaseal.logs import setup_logging
from dynaseal.runtime.views import load_runtime
from dynaseal.tenancy.source import TenancySource, follow_generation
from dynaseal.usage import kafka_io
from dynaseal.usage_store.schema import database_url, make_engine
from usage_recorder.recorder import DEFAULT_GROUP_ID, Recorder


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = argparse.ArgumentParser(prog="python -m usage_recorder", description=__doc__)
    parser.add_argument("--config", help="config file (default: $DYNASEAL_CONFIG or dynaseal.yaml)")
    parser.add_argument("--group-id", default=DEFAULT_GROUP_ID, help="consumer group (default: %(default)s)")
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP, config)")
    parser.add_argument("--database-url", help="SQLAlchemy URL (default: admin.database_url, else SQLite in data_dir)")
    parser.add_argument("--metrics-port", type=int, help="serve Prometheus metrics here (default: none)")
    parser.add_argument("--session-timeout-ms", type=int, default=kafka_io.SESSION_TIMEOUT_MS)
    parser.add_argument("--heartbeat-interval-ms", type=int, default=kafka_io.HEARTBEAT_INTERVAL_MS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and record until stopped."""
    args = build_parser().parse_args(argv)
    setup_logging("usage-recorder")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    # The recorder holds no tenant data, but says which config generation the stack runs, as every service.
    tenancy = TenancySource(args.config)
    try:
        runtime = load_runtime(args.config)
        tenancy.accept(tenancy.load())
    except ConfigError as exc:
        print(f"usage recorder: {exc}", file=sys.stderr)
        return 2
    stop_watch = threading.Event()
    follow_generation(tenancy, stop_watch)
    engine = make_engine(args.database_url or database_url(runtime.cfg))
    if args.metrics_port:
        try:
            start_http_server(args.metrics_port, addr=runtime.cfg.gateway.host)
        except OSError as exc:
            print(f"usage recorder: cannot serve metrics: {exc}", file=sys.stderr)
            return 2
    recorder = Recorder(engine, args.bootstrap or runtime.kafka.value, args.group_id,
                        f"dynaseal-usage-{socket.gethostname()}-{os.getpid()}",
                        args.session_timeout_ms, args.heartbeat_interval_ms)

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop_watch.set()
        recorder.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    recorder.run()
    engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
