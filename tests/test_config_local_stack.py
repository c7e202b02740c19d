"""`local:`: the laptop stack's mock, Redis and Kafka ports live outside the gateway's model; the old spelling loads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from dynaseal.config import ConfigError, GatewayConfig, Ports, bundled_dev_config, load_config
from dynaseal.envoy.render import upstream_of
from dynaseal.local_stack import LocalStackConfig, lift_legacy_ports
from dynaseal.runtime.locations import resolve_kafka, resolve_redis
from dynaseal.upstreams import declared_upstreams
from dynaseal_launcher.stack import LocalStack

NO_URLS: dict[str, str] = {}  # no $REDIS_URL / $KAFKA_BOOTSTRAP: the local defaults apply


def dev_raw(tmp_path: Path) -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load(bundled_dev_config().read_text())
    raw["env_file"] = str(bundled_dev_config().parent / "dev.env")
    raw["gateway"]["data_dir"] = str(tmp_path / "data")
    return raw


def write(tmp_path: Path, raw: dict[str, Any], name: str = "dynaseal.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_the_gateway_model_no_longer_has_the_local_ports() -> None:
    for name in ("mock_upstream", "redis", "kafka"):
        assert name not in Ports.model_fields
        assert not hasattr(Ports(), name)
    assert "local" not in GatewayConfig.model_fields
    assert set(LocalStackConfig.model_fields) == {"mock_upstream_port", "redis_port", "kafka_port"}


def test_the_old_spelling_loads_to_the_same_values(tmp_path: Path) -> None:
    new = dev_raw(tmp_path)
    new["gateway"]["ports"] = {"envoy": 18000, "authz": 19191}
    new["local"] = {"mock_upstream_port": 18100, "redis_port": 16379, "kafka_port": 19092}
    old = dev_raw(tmp_path)
    old.pop("local", None)
    old["gateway"]["ports"] = {"envoy": 18000, "authz": 19191, "mock_upstream": 18100, "redis": 16379,
                               "kafka": 19092}
    from_new, from_old = load_config(write(tmp_path, new, "new.yaml")), load_config(write(tmp_path, old, "old.yaml"))
    assert from_old.local == from_new.local == LocalStackConfig(mock_upstream_port=18100, redis_port=16379,
                                                                kafka_port=19092)
    assert from_old.gateway.ports == from_new.gateway.ports
    assert from_old == from_new


def test_the_local_ports_make_the_default_urls(tmp_path: Path) -> None:
    raw = dev_raw(tmp_path)
    raw["gateway"]["ports"] = {"redis": 16380, "kafka": 19093, "mock_upstream": 18101}  # old spelling, mixed
    raw.pop("local", None)
    cfg = load_config(write(tmp_path, raw))
    assert resolve_redis(cfg, NO_URLS).value == "redis://127.0.0.1:16380/0"
    assert resolve_kafka(cfg, NO_URLS).value == "127.0.0.1:19093"
    assert declared_upstreams(cfg)["default"].base_url == "http://127.0.0.1:18101/v1"
    assert upstream_of(cfg).port == 18101


def test_the_launcher_starts_the_local_servers_on_those_ports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REDIS_URL", "KAFKA_BOOTSTRAP"):  # a URL from the environment would skip that server
        monkeypatch.delenv(name, raising=False)
    raw = dev_raw(tmp_path)
    raw["local"] = {"mock_upstream_port": 18102, "redis_port": 16381, "kafka_port": 19094}
    path = write(tmp_path, raw)
    specs = {spec.name: spec for spec in LocalStack(load_config(path), path, pipeline=True).specs(tmp_path / "e.yaml")}
    assert ("http", 18102) in specs["mock-llm"].ports
    assert ("tcp", 16381) in specs["redis"].ports
    assert ("tcp", 19094) in specs["kafka"].ports


def test_both_spellings_agreeing_is_fine_disagreeing_is_an_error(tmp_path: Path) -> None:
    raw = dev_raw(tmp_path)
    raw["gateway"]["ports"] = {"redis": 16379}
    raw["local"] = {"redis_port": 16379}
    assert load_config(write(tmp_path, raw)).local.redis_port == 16379
    raw["local"] = {"redis_port": 16390}
    with pytest.raises(ConfigError, match=r"gateway\.ports\.redis .* local\.redis_port disagree"):
        load_config(write(tmp_path, raw))


@pytest.mark.parametrize("local", [{"redis_port": 0}, {"kafka_port": 70000}, {"mock_upstream_port": "x"},
                                   {"redis": 6379}, "6379"])
def test_a_bad_local_section_is_a_config_error(tmp_path: Path, local: object) -> None:
    raw = dev_raw(tmp_path)
    raw["local"] = local
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, raw))


def test_an_unknown_gateway_port_is_still_refused(tmp_path: Path) -> None:
    raw = dev_raw(tmp_path)
    raw["gateway"]["ports"] = {"redis_port": 6379}  # the new name in the old place is a typo, not a spelling
    with pytest.raises(ConfigError, match="redis_port"):
        load_config(write(tmp_path, raw))


def test_lifting_leaves_its_input_alone() -> None:
    raw: dict[str, Any] = {"gateway": {"ports": {"envoy": 1, "kafka": 2}}, "tenants": []}
    lifted = lift_legacy_ports(raw)
    assert raw == {"gateway": {"ports": {"envoy": 1, "kafka": 2}}, "tenants": []}
    assert lifted == {"gateway": {"ports": {"envoy": 1}}, "tenants": [], "local": {"kafka_port": 2}}
    untouched_inputs: list[object] = [{"gateway": {"ports": {"envoy": 1}}}, {"gateway": None},
                                      {"gateway": {"ports": []}}, [], None]
    for untouched in untouched_inputs:
        assert lift_legacy_ports(untouched) is untouched
