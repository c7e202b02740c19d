"""Serve TensorZero's embedded Rust gateway over HTTP until SIGTERM: `python tensorzero_serve.py CONFIG URL_FILE`.

Run with the interpreter of the venv that has the `tensorzero` wheel (never the project's): the
wheel's `_start_http_gateway` runs the gateway inside this process, on a loopback port of its
choosing, and returns its OpenAI-compatible base URL, which is written to URL_FILE once it serves.
This file imports nothing from the project, so it runs in that other venv as it is.
"""

from __future__ import annotations

import importlib
import signal
import sys
import threading
from pathlib import Path
from typing import Any


def main(argv: list[str]) -> int:
    """Start the gateway, publish its base URL, wait for a signal, close it."""
    config_file, url_file = argv
    tensorzero: Any = importlib.import_module("tensorzero")
    gateway = tensorzero._start_http_gateway(config_file=config_file, clickhouse_url=None, postgres_url=None,
                                             valkey_url=None, async_setup=False)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    # Written whole, then renamed: a reader never sees half a URL.
    Path(url_file + ".tmp").write_text(str(gateway.base_url))
    Path(url_file + ".tmp").rename(url_file)
    while not stop.wait(1.0):
        pass
    gateway.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
