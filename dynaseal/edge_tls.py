"""TLS at the edge: the certificate Envoy's client listener serves, read from files and rotated
without a restart (Envoy reads it through file-based SDS and watches the files)."""

from __future__ import annotations

from pathlib import PurePosixPath

from pydantic import field_validator

from dynaseal.tenant_config import StrictModel


class EdgeTls(StrictModel):
    """`gateway.tls`: the listener's certificate chain and key (PEM files) and the SDS file naming them."""

    cert_file: str  # PEM chain, leaf first; replaced by a rename (or a Kubernetes secret update) to rotate
    key_file: str  # PEM private key, replaced together with cert_file
    # Where the secret resource Envoy reads lives: `dynaseal envoy-config` writes it beside the
    # Envoy config; it names cert_file and key_file, which Envoy then watches.
    sds_file: str

    @field_validator("cert_file", "key_file", "sds_file")
    @classmethod
    def _absolute(cls, path: str) -> str:
        # Envoy resolves relative paths against its own working directory, not the config's.
        if not PurePosixPath(path).is_absolute():
            raise ValueError(f"{path!r} must be an absolute path")
        return path
