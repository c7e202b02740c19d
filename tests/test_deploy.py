"""Envoy configs in deploy/: rendered from their Dynaseal configs, valid, health-checking authz."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from deploy_support import (
    DEPLOY,
    ENVOY_RENDERS,
    REPO,
    access_log_of,
    clusters,
    endpoint,
)

from dynaseal.config import load_config
from dynaseal.envoy import render as envoy_render
from dynaseal_launcher import envoy_config
from dynaseal_launcher.stack import AUTHZ_SERVICE_NAME

# ---------------------------------------------------------------- Envoy configs


@pytest.mark.parametrize(("envoy_file", "config", "authz_host"), ENVOY_RENDERS, ids=lambda v: getattr(v, "name", v))
def test_envoy_config_is_rendered_from_its_dynaseal_config(envoy_file: Path, config: Path, authz_host: str) -> None:
    """The committed file is exactly what `dynaseal envoy-config` renders (re-render after config edits)."""
    cfg = load_config(config)
    assert envoy_render.render(cfg, Path(access_log_of(cfg)), authz_host=authz_host) == envoy_file.read_text(), (
        f"re-render: dynaseal --config {config.relative_to(REPO)} envoy-config --authz-host {authz_host} "
        f"--access-log {access_log_of(cfg)} --out {envoy_file.relative_to(REPO)}")


def envoy_files() -> Iterator[Path]:
    """Every Envoy config under deploy/ (anything with static_resources)."""
    for path in sorted(DEPLOY.rglob("*.yaml")):
        if "static_resources:" in path.read_text():
            yield path


def test_every_envoy_config_in_deploy_is_checked() -> None:
    assert sorted(envoy_files()) == sorted(f for f, _, _ in ENVOY_RENDERS)


@pytest.mark.parametrize(("envoy_file", "config", "authz_host"), ENVOY_RENDERS, ids=lambda v: getattr(v, "name", v))
def test_envoy_config_passes_envoy_validate(envoy_file: Path, config: Path, authz_host: str, tmp_path: Path) -> None:
    """`envoy --mode validate` opens the access log, so only its path is pointed into tmp_path."""
    text = envoy_file.read_text()
    log_path = access_log_of(load_config(config))
    assert text.count(log_path) == 1
    checked = tmp_path / envoy_file.name
    checked.write_text(text.replace(log_path, str(tmp_path / "access.log")))
    ok, output = envoy_config.validate(checked)
    assert ok, output[-3000:]


def test_envoy_validate_resolves_no_names(tmp_path: Path) -> None:
    """DNS clusters (compose service names, the provider) are not resolved at validate time."""
    envoy_file, config, _ = ENVOY_RENDERS[1]
    doc = yaml.safe_load(envoy_file.read_text().replace(access_log_of(load_config(config)),
                                                        str(tmp_path / "access.log")))
    dns_clusters = [c for c in clusters(doc).values() if c["type"] in ("STRICT_DNS", "LOGICAL_DNS")]
    assert len(dns_clusters) == 2
    for cluster in dns_clusters:
        sock = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        sock["socket_address"]["address"] = f"{cluster['name'].replace('_', '-')}.dynaseal.invalid"
    checked = tmp_path / "unresolvable.yaml"
    checked.write_text(yaml.safe_dump(doc))
    ok, output = envoy_config.validate(checked)
    assert ok, output[-3000:]


@pytest.mark.parametrize(("envoy_file", "config", "authz_host"), ENVOY_RENDERS, ids=lambda v: getattr(v, "name", v))
def test_envoy_config_matches_dynaseal_ports_and_health_checks_authz(envoy_file: Path, config: Path,
                                                                     authz_host: str) -> None:
    cfg = load_config(config)
    ports = cfg.gateway.ports
    doc = yaml.safe_load(envoy_file.read_text())
    assert doc["admin"]["address"]["socket_address"]["port_value"] == ports.envoy_admin
    listener = doc["static_resources"]["listeners"][0]["address"]["socket_address"]
    assert (listener["address"], listener["port_value"]) == ("0.0.0.0", ports.envoy)
    authz = clusters(doc)["dynaseal_authz"]
    assert endpoint(authz) == (authz_host, ports.authz)
    [check] = authz["health_checks"]
    assert check["grpc_health_check"]["service_name"] == AUTHZ_SERVICE_NAME
    upstream = envoy_config.upstream_of(cfg)
    assert endpoint(clusters(doc)["upstream_llm"]) == (upstream.host, upstream.port)


