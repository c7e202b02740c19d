"""The admin settings a deployment needs: the stores' database URL from a secret variable, and the host Envoy
reaches the admin service at (a compose service or Kubernetes Service name)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from dynaseal.config import ConfigError, DynasealConfig, admin_database_url, load_config
from dynaseal.envoy import admin_routes
from dynaseal.redaction import redact
from dynaseal.tenancy.source import TenancySource
from dynaseal.tenancy.store import store_url
from dynaseal.usage_store.schema import database_url
from dynaseal_launcher import envoy_config

URL_VARIABLE = "DYNASEAL_TEST_ADMIN_DATABASE_URL"
TENANTS = [{"id": "a", "keys": [{"alg": "HS256", "secret_env": "S"}]}]


def config(admin: dict[str, Any], tmp_path: Path) -> DynasealConfig:
    """A minimal config with this `admin` section and its data in tmp_path."""
    return DynasealConfig.model_validate({"gateway": {"data_dir": str(tmp_path)}, "tenants": TENANTS,
                                          "admin": admin})


def test_the_database_url_comes_from_the_variable_the_config_names(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql+psycopg://dynaseal:s3cret-pw@db.example.internal:5432/dynaseal"
    monkeypatch.setenv(URL_VARIABLE, f"  {url}\n")
    cfg = config({"database_url_env": URL_VARIABLE}, tmp_path)
    assert admin_database_url(cfg) == url
    # Both stores, the tenants' and the usage's, live in that one database.
    assert store_url(cfg) == database_url(cfg) == url
    assert not (tmp_path / "admin").exists()  # no SQLite store made beside it
    # It carries the database password: no log line shows it.
    assert "s3cret-pw" not in redact(f"cannot connect to {url}") + redact("password s3cret-pw")


def test_the_variable_may_come_from_the_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(URL_VARIABLE, raising=False)
    (tmp_path / "dev.env").write_text(f"{URL_VARIABLE}=postgresql+psycopg://from-the-file/x\n")
    cfg = DynasealConfig.model_validate({"env_file": str(tmp_path / "dev.env"), "gateway": {"data_dir": str(tmp_path)},
                                         "tenants": TENANTS, "admin": {"database_url_env": URL_VARIABLE}})
    assert admin_database_url(cfg) == "postgresql+psycopg://from-the-file/x"


@pytest.mark.parametrize("value", [None, "", "   "])
def test_a_named_variable_that_is_unset_refuses_instead_of_a_store_of_its_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    """Fail closed: a pod that fell back to SQLite would never see the other pods' tenant changes."""
    if value is None:
        monkeypatch.delenv(URL_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(URL_VARIABLE, value)
    cfg = config({"database_url_env": URL_VARIABLE}, tmp_path)
    for resolve in (admin_database_url, store_url, database_url):
        with pytest.raises(ConfigError, match=URL_VARIABLE):
            resolve(cfg)
    assert not (tmp_path / "admin").exists()


def test_a_service_refuses_to_load_without_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(URL_VARIABLE, raising=False)
    monkeypatch.setenv("S", "s" * 32)
    path = tmp_path / "dynaseal.yaml"
    path.write_text(yaml.safe_dump({"gateway": {"data_dir": str(tmp_path)}, "tenants": TENANTS,
                                    "admin": {"database_url_env": URL_VARIABLE}}))
    with pytest.raises(ConfigError, match="database_url_env"):
        TenancySource(path).load()


def test_the_url_and_its_variable_exclude_each_other(tmp_path: Path) -> None:
    path = tmp_path / "dynaseal.yaml"
    path.write_text(yaml.safe_dump({"tenants": TENANTS, "admin": {"database_url": "sqlite:///x.db",
                                                                  "database_url_env": URL_VARIABLE}}))
    with pytest.raises(ConfigError, match="not both"):
        load_config(path)


def test_without_either_the_stores_stay_sqlite_in_the_data_dir(tmp_path: Path) -> None:
    cfg = config({}, tmp_path)
    assert admin_database_url(cfg) is None
    assert store_url(cfg) == f"sqlite:///{tmp_path.resolve()}/admin/admin.db"
    assert database_url(cfg) == f"sqlite:///{tmp_path.resolve()}/admin/usage.db"


@pytest.mark.parametrize(("service_host", "discovery", "address"), [
    (None, "STATIC", "127.0.0.1"),  # `dynaseal up`: the gateway's own machine
    ("admin", "STRICT_DNS", "admin"),  # a compose service
    ("dynaseal-admin.dynaseal.svc.cluster.local", "STRICT_DNS", "dynaseal-admin.dynaseal.svc.cluster.local"),
    ("10.0.0.9", "STATIC", "10.0.0.9"),
    ("fd00::9", "STATIC", "fd00::9"),
])
def test_envoy_reaches_the_admin_service_at_its_service_host(tmp_path: Path, config_path: Path,
                                                             service_host: str | None, discovery: str,
                                                             address: str) -> None:
    raw = yaml.safe_load(config_path.read_text())
    raw["admin"] = {**(raw.get("admin") or {}), "service_host": service_host}
    path = tmp_path / "dynaseal.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    rendered = tmp_path / "envoy.yaml"
    rendered.write_text(envoy_config.render(cfg, tmp_path / "access.log"))
    ok, output = envoy_config.validate(rendered)  # a DNS name is not resolved at validate time
    assert ok, output[-3000:]
    clusters = {c["name"]: c for c in yaml.safe_load(rendered.read_text())["static_resources"]["clusters"]}
    admin = clusters[admin_routes.CLUSTER]
    socket = admin["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert (admin["type"], socket["address"], socket["port_value"]) == (discovery, address, cfg.gateway.ports.admin)


@pytest.mark.parametrize("service_host", ["admin\n  - name: injected", "a b", "-admin", "admin:9300", "admin.", "",
                                          "a" * 254])
def test_a_service_host_that_is_not_a_host_is_refused(tmp_path: Path, service_host: str) -> None:
    """It is written into Envoy's YAML: anything but a host name or address never gets there."""
    path = tmp_path / "dynaseal.yaml"
    path.write_text(yaml.safe_dump({"tenants": TENANTS, "admin": {"service_host": service_host}}))
    with pytest.raises(ConfigError, match="service_host"):
        load_config(path)
