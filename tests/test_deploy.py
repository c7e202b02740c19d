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
from dynaseal.envoy import admin_routes
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
    assert {c["name"] for c in dns_clusters} == {"upstream_llm", "dynaseal_authz", admin_routes.CLUSTER}
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


@pytest.mark.parametrize(("envoy_file", "config", "authz_host"), ENVOY_RENDERS, ids=lambda v: getattr(v, "name", v))
def test_envoy_sends_the_seed_registration_to_the_admin_service_and_nothing_else(
        envoy_file: Path, config: Path, authz_host: str) -> None:
    """The seed's backend registration reaches the admin service by its deployed name, without ext_authz;
    no other route does (the operator's /admin/v1 and the console stay off the gateway's port)."""
    cfg = load_config(config)
    assert cfg.admin is not None and cfg.admin.service_host not in (None, "127.0.0.1", authz_host)
    doc = yaml.safe_load(envoy_file.read_text())
    admin = clusters(doc)[admin_routes.CLUSTER]
    assert endpoint(admin) == (cfg.admin.service_host, cfg.gateway.ports.admin)
    assert admin["type"] == "STRICT_DNS"
    [listener] = doc["static_resources"]["listeners"]
    manager = next(f for f in listener["filter_chains"][0]["filters"]
                   if f["name"] == "envoy.filters.network.http_connection_manager")
    routes = [r for host in manager["typed_config"]["route_config"]["virtual_hosts"] for r in host["routes"]]
    to_admin = [r for r in routes if r.get("route", {}).get("cluster") == admin_routes.CLUSTER]
    assert {(r["match"]["path"], r["match"]["headers"][0]["string_match"]["exact"]) for r in to_admin} == set(
        admin_routes.SEED_ROUTES)
    for route in to_admin:
        assert route["typed_per_filter_config"]["envoy.filters.http.ext_authz"]["disabled"] is True
    assert not [r for r in routes if "/admin/" in str(r["match"]) or "/console" in str(r["match"])]

