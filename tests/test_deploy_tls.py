"""TLS at the edge, on the real Envoy: the listener serves a certificate from files (through
file-based SDS), speaks HTTP/2 and HTTP/1.1 by ALPN, and serves a replaced certificate to new
connections without a restart. authz is scripted (bench/scripted_authz.py): TLS is Envoy's alone.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import TenantKeys, write_test_config
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench.scripted_authz import ScriptedAuthz, allow
from dynaseal.config import ConfigError, load_config
from dynaseal_launcher import envoy_config
from dynaseal_launcher.probes import http_ok
from dynaseal_launcher.processes import ServiceSpec, Supervisor

pytestmark = pytest.mark.integration

BODY = {"model": "gpt-4o-mini", "max_tokens": 8, "messages": [{"role": "user", "content": "hi over TLS"}]}


@dataclass
class Ca:
    """A throwaway certificate authority, made in the test."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def make(cls) -> Ca:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dynaseal test CA")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(key, hashes.SHA256()))
        return cls(key, cert)

    def issue(self, common_name: str) -> tuple[bytes, bytes, int]:
        """(cert PEM, key PEM, serial) of a server certificate for 127.0.0.1 and localhost."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        serial = x509.random_serial_number()
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
                .issuer_name(self.cert.subject).public_key(key.public_key()).serial_number(serial)
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(hours=1))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                            x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                               critical=False)
                .sign(self.key, hashes.SHA256()))
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return cert.public_bytes(serialization.Encoding.PEM), key_pem, serial

    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)


def install(directory: Path, cert: bytes, key: bytes) -> None:
    """Put a cert/key pair in place the way rotation tools do: write beside, then rename over."""
    for name, data in (("tls.key", key), ("tls.crt", cert)):
        staged = directory / f".{name}.new"
        staged.write_bytes(data)
        os.replace(staged, directory / name)


@dataclass
class TlsEdge:
    """Envoy on TLS in front of the mock upstream."""

    host: str
    port: int
    ca: Ca
    ca_file: Path
    cert_dir: Path

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def served_serial(self) -> int:
        """The serial number of the certificate a new connection is served."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        with socket.create_connection((self.host, self.port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname=self.host) as tls:
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return int(x509.load_der_x509_certificate(der).serial_number)


@pytest.fixture(scope="module")
def tls_edge(tmp_path_factory: pytest.TempPathFactory, test_keys: TenantKeys) -> Iterator[tuple[TlsEdge, int]]:
    """Envoy rendered with gateway.tls; yields it and the serial of the first certificate."""
    directory = tmp_path_factory.mktemp("tls")
    ca = Ca.make()
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(ca.pem())
    cert_dir = directory / "certs"
    cert_dir.mkdir()
    cert, key, serial = ca.issue("first")
    install(cert_dir, cert, key)
    path = write_test_config(directory, test_keys)
    raw = yaml.safe_load(path.read_text())
    raw["gateway"]["tls"] = {"cert_file": str(cert_dir / "tls.crt"), "key_file": str(cert_dir / "tls.key"),
                             "sds_file": str(directory / "edge-tls.sds.yaml")}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg = load_config(path)
    gw = cfg.gateway
    sds = envoy_config.tls_sds(cfg)
    assert sds is not None
    (directory / "edge-tls.sds.yaml").write_text(sds)
    envoy_file = directory / "envoy.yaml"
    envoy_file.write_text(envoy_config.render(cfg, directory / "access.log"))
    ok, output = envoy_config.validate(envoy_file)
    assert ok, output[-3000:]
    supervisor = Supervisor(directory / "logs", gw.host)
    with ScriptedAuthz(lambda _check: allow(), port=gw.ports.authz):
        try:
            mock = f"http://{gw.host}:{cfg.local.mock_upstream_port}"
            supervisor.start(ServiceSpec(
                "mock-llm", [sys.executable, "-m", "mock_llm", "--host", gw.host,
                             "--port", str(cfg.local.mock_upstream_port)],
                mock, lambda: http_ok(f"{mock}/healthz")))
            supervisor.start(ServiceSpec(
                "envoy", [envoy_config.envoy_binary(), "-c", str(envoy_file), "--disable-hot-restart",
                          "--log-level", "warn", "--concurrency", "1"],
                "envoy", lambda: http_ok(f"http://{gw.host}:{gw.ports.envoy_admin}/ready")))
            yield TlsEdge(gw.host, gw.ports.envoy, ca, ca_file, cert_dir), serial
        finally:
            supervisor.stop()


@pytest.mark.parametrize("http2", [False, True], ids=["http1.1", "h2"])
def test_completion_through_tls_on_both_protocols(tls_edge: tuple[TlsEdge, int], http2: bool) -> None:
    edge, _ = tls_edge
    with httpx.Client(verify=ssl.create_default_context(cafile=str(edge.ca_file)), http1=not http2,
                      http2=http2, timeout=15) as client:
        reply = client.post(f"{edge.url}/v1/chat/completions", json=BODY)
    assert reply.status_code == 200, reply.text
    assert reply.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
    assert reply.json()["choices"][0]["message"]["content"]


def test_plain_http_and_untrusted_clients_get_no_answer(tls_edge: tuple[TlsEdge, int]) -> None:
    edge, _ = tls_edge
    with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port: no HTTP answer
        httpx.post(f"http://{edge.host}:{edge.port}/v1/chat/completions", json=BODY, timeout=5)
    with pytest.raises(httpx.ConnectError):  # the system trust store does not know the test CA
        httpx.post(f"{edge.url}/v1/chat/completions", json=BODY, timeout=5)


def test_rotated_certificate_is_served_without_restart(tls_edge: tuple[TlsEdge, int]) -> None:
    edge, first = tls_edge
    assert edge.served_serial() == first
    cert, key, second = edge.ca.issue("second")
    install(edge.cert_dir, cert, key)
    deadline = time.monotonic() + 30  # Envoy reloads on the file watch's event, within a moment
    served = first
    while served != second and time.monotonic() < deadline:
        time.sleep(0.2)
        served = edge.served_serial()
    assert served == second, "Envoy kept serving the replaced certificate"
    with httpx.Client(verify=ssl.create_default_context(cafile=str(edge.ca_file)), http2=True, timeout=15) as client:
        assert client.post(f"{edge.url}/v1/chat/completions", json=BODY).status_code == 200


def test_tls_paths_must_be_absolute(tmp_path: Path, test_keys: TenantKeys) -> None:
    path = write_test_config(tmp_path, test_keys)
    raw = yaml.safe_load(path.read_text())
    raw["gateway"]["tls"] = {"cert_file": "certs/tls.crt", "key_file": "/k", "sds_file": "/s"}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(ConfigError, match=r"cert_file.*absolute"):
        load_config(path)


def test_envoy_config_command_writes_the_sds_file_beside(tmp_path: Path, test_keys: TenantKeys) -> None:
    from dynaseal_launcher import cli

    path = write_test_config(tmp_path, test_keys)
    raw = yaml.safe_load(path.read_text())
    raw["gateway"]["tls"] = {"cert_file": "/etc/envoy/tls/tls.crt", "key_file": "/etc/envoy/tls/tls.key",
                             "sds_file": "/etc/envoy/edge-tls.sds.yaml"}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    out = tmp_path / "out"
    out.mkdir()
    assert cli.main(["--config", str(path), "envoy-config", "--out", str(out / "envoy.yaml")]) == 0
    sds = yaml.safe_load((out / "edge-tls.sds.yaml").read_text())
    [secret] = sds["resources"]
    assert secret["tls_certificate"]["certificate_chain"] == {"filename": "/etc/envoy/tls/tls.crt"}
    assert secret["tls_certificate"]["watched_directory"] == {"path": "/etc/envoy/tls"}
    listener = yaml.safe_load((out / "envoy.yaml").read_text())["static_resources"]["listeners"][0]
    context = listener["filter_chains"][0]["transport_socket"]["typed_config"]["common_tls_context"]
    assert context["alpn_protocols"] == ["h2", "http/1.1"]
    assert context["tls_certificate_sds_secret_configs"][0]["sds_config"]["path_config_source"]["path"] == (
        "/etc/envoy/edge-tls.sds.yaml")


def test_without_tls_the_listener_is_plain(tmp_path: Path, test_keys: TenantKeys) -> None:
    cfg = load_config(write_test_config(tmp_path, test_keys))
    assert envoy_config.tls_sds(cfg) is None
    doc = yaml.safe_load(envoy_config.render(cfg, tmp_path / "access.log"))
    assert "transport_socket" not in doc["static_resources"]["listeners"][0]["filter_chains"][0]
    assert "node" not in doc
