"""Config loading: every error reported at once, secrets by env var only and never printed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dynaseal.config import ConfigError, bundled_dev_config, load_config
from dynaseal.keys.tenants import build_registry


def write(tmp_path: Path, raw: object) -> Path:
    path = tmp_path / "dynaseal.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_bundled_dev_config_has_the_seed_tenant(tmp_path: Path) -> None:
    cfg = load_config(bundled_dev_config(), data_dir=str(tmp_path))
    tenant = next(t for t in cfg.tenants if t.id == "671249a93f1cf2f8bf9b2b82")
    assert tenant.callback is not None and tenant.callback.url.endswith("/v1/callback/usage")
    assert any(k.alg == "HS256" and k.kid is None for k in tenant.keys)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    raw = {"gateway": {"leeway_s": 300, "ports": {"envoy": "eighty"}},
           "tenants": [{"id": "a", "keys": [{"alg": "none", "secret_env": "X"}]},
                       {"id": "a", "keys": [{"kid": "../k", "alg": "EdDSA", "public_jwk": {"kty": "OKP"}}]}]}
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, raw))
    message = str(err.value)
    assert "leeway_s" in message and "ports.envoy" in message and "alg" in message
    assert message.count("\n  - ") >= 3


def test_unknown_field_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="gatway"):
        load_config(write(tmp_path, {"gatway": {}, "tenants": [{"id": "a", "keys": [
            {"alg": "HS256", "secret_env": "S"}]}]}))


def test_missing_file_and_bad_yaml_are_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("tenants: [ {id: broken")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(bad)


def test_missing_secret_env_is_reported_by_name_not_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    cfg = load_config(write(tmp_path, {"tenants": [{"id": "a", "keys": [
        {"alg": "HS256", "secret_env": "NOT_SET_ANYWHERE"}]}]}))
    with pytest.raises(ConfigError, match="NOT_SET_ANYWHERE"):
        build_registry(cfg)


def test_secrets_never_print(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_SECRET", "super-secret-value-123")
    monkeypatch.setenv("T_PROVIDER", "sk-provider-secret-456")
    cfg = load_config(write(tmp_path, {"tenants": [{"id": "a", "keys": [{"alg": "HS256", "secret_env": "T_SECRET"}],
                                                    "upstream": {"api_key_env": "T_PROVIDER"}}]}))
    registry = build_registry(cfg)
    shown = repr(registry) + str(registry)
    assert "super-secret-value-123" not in shown
    assert "sk-provider-secret-456" not in shown


def test_private_jwk_is_refused_as_a_verification_key(tmp_path: Path) -> None:
    from dynaseal.keys.mint import SigningKey

    private = SigningKey.generate("p-1").private_jwk()
    cfg = load_config(write(tmp_path, {"tenants": [{"id": "a", "keys": [
        {"kid": "p-1", "alg": "EdDSA", "public_jwk": private}]}]}))
    with pytest.raises(ConfigError, match="must be public"):
        build_registry(cfg)


def test_alg_must_match_key_type(tmp_path: Path) -> None:
    from dynaseal.keys.mint import SigningKey

    cfg = load_config(write(tmp_path, {"tenants": [{"id": "a", "keys": [
        {"kid": "p-1", "alg": "ES256", "public_jwk": SigningKey.generate("p-1").public_jwk()}]}]}))
    with pytest.raises(ConfigError, match="does not match"):
        build_registry(cfg)


def test_authz_server_defaults_to_native_and_takes_only_known_transports(tmp_path: Path) -> None:
    assert load_config(bundled_dev_config()).authz.server == "native"
    raw = yaml.safe_load(bundled_dev_config().read_text())
    raw["env_file"] = str(bundled_dev_config().parent / "dev.env")
    raw["authz"] = {"server": "grpcio", "io_threads": 2}
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert load_config(path).authz.server == "grpcio"
    assert load_config(path).authz.io_threads == 2
    raw["authz"] = {"server": "grpc", "io_threads": 0, "workers": 2}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as bad:
        load_config(path)
    message = str(bad.value)
    assert "authz.server" in message and "authz.io_threads" in message and "authz.workers" in message
