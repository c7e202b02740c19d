"""Config and the environment: loading writes nothing to `os.environ`; each service resolves only the
secrets it uses, in the process environment first and the config's `env_file` second; authz and the
consumer each load their config and build their runtime once."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from dynaseal.config import ConfigError, DynasealConfig, config_environment, load_config
from dynaseal.keys.tenants import build_registry
from dynaseal.runtime.views import Runtime

# Names nobody sets: unique to this file, so the real environment cannot answer for the env file.
KEY_SECRET = "DYNASEAL_T_ENVFILE_KEY_SECRET"
HOOK_SECRET = "DYNASEAL_T_ENVFILE_HOOK_SECRET"
SESSION_SECRET = "DYNASEAL_T_ENVFILE_SESSION_SECRET"
PUBLIC_URL = "DYNASEAL_T_ENVFILE_PUBLIC_URL"
UNSET = "DYNASEAL_T_NEVER_SET_ANYWHERE"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (KEY_SECRET, HOOK_SECRET, SESSION_SECRET, PUBLIC_URL, UNSET):
        monkeypatch.delenv(name, raising=False)


def write_config(directory: Path, *, hook_env: str = HOOK_SECRET, key_env: str = KEY_SECRET,
                 **gateway: Any) -> Path:
    """A config whose secrets come from an env file beside it (named relatively, as dev.yaml does)."""
    (directory / "secrets.env").write_text(
        f"# test secrets\n{KEY_SECRET}=key-from-file\n{HOOK_SECRET}=whsec_ZmlsZS1ob29rLXNlY3JldC0wMDAwMDAwMQ==\n"
        f"{SESSION_SECRET}=session-from-file-0123456789abcdef0123456789\n{PUBLIC_URL}=https://llm.example.com\n")
    raw = {
        "env_file": "secrets.env",
        "gateway": {"data_dir": str(directory / "data"), "redis_url": "redis://127.0.0.1:6/0", **gateway},
        "tenants": [{"id": "t", "keys": [{"alg": "HS256", "secret_env": key_env}], "limits": {"models": ["m"]},
                     "callback": {"url": "http://127.0.0.1:9/cb", "secret_env": hook_env}}],
        "issuer": {"tenant": "t", "session_secret_env": SESSION_SECRET},
    }
    path = directory / "dynaseal.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_loading_a_config_leaves_the_process_environment_as_it_was(tmp_path: Path) -> None:
    before = dict(os.environ)
    cfg = load_config(write_config(tmp_path, public_url_env=PUBLIC_URL))
    Runtime.from_config(cfg).authz()
    Runtime.from_config(cfg).consumer()
    Runtime.from_config(cfg).issuer()
    # Regression: load_config used to copy the env file (and read public_url_env) into os.environ.
    assert dict(os.environ) == before
    assert cfg.gateway.public_url == "https://llm.example.com"  # read from the env file, not the environment


def test_the_env_files_values_are_resolved_and_the_real_environment_wins(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(write_config(tmp_path))
    assert cfg.env_file == str(tmp_path / "secrets.env")  # absolute: every service reads the same file
    issuer = Runtime.from_config(cfg).issuer()
    assert issuer.session_secret.get_secret_value() == "session-from-file-0123456789abcdef0123456789"
    tenant = build_registry(cfg).get("t")
    assert tenant is not None and tenant.seed_key is not None and tenant.seed_key.key == b"key-from-file"

    monkeypatch.setenv(KEY_SECRET, "key-from-environment")
    tenant = Runtime.from_config(cfg).authz().registry.get("t")
    assert tenant is not None and tenant.seed_key is not None and tenant.seed_key.key == b"key-from-environment"
    explicit = Runtime.from_config(cfg, {KEY_SECRET: "key-given"}).authz().registry.get("t")
    assert explicit is not None and explicit.seed_key is not None and explicit.seed_key.key == b"key-given"
    env = config_environment(cfg, {SESSION_SECRET: "given"})
    assert env[SESSION_SECRET] == "given" and env[HOOK_SECRET].startswith("whsec_")


def test_authz_does_not_resolve_callback_secrets(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, hook_env=UNSET))
    view = Runtime.from_config(cfg).authz()  # regression: a missing callback secret refused authz's start
    tenant = view.registry.get("t")
    assert tenant is not None and not hasattr(tenant, "callback_secret")
    assert tenant.callback is not None  # what authz does read of it (include_content)
    with pytest.raises(ConfigError, match=UNSET):
        Runtime.from_config(cfg).consumer()  # the one service that signs with it


def test_the_consumer_does_not_resolve_tenant_keys(tmp_path: Path) -> None:
    cfg = load_config(write_config(tmp_path, key_env=UNSET))
    target = Runtime.from_config(cfg).consumer().get("t")
    assert target is not None and target.callback_secret is not None
    with pytest.raises(ConfigError, match=UNSET):
        Runtime.from_config(cfg).authz()


def test_authz_builds_one_runtime_per_load_and_uses_its_views_redis(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from authz_service import server as server_module
    from dynaseal.ledger.quota import RedisQuota

    monkeypatch.delenv("REDIS_URL", raising=False)
    built: list[DynasealConfig] = []
    original = Runtime.from_config.__func__  # type: ignore[attr-defined]

    def counting(cls: type[Runtime], cfg: DynasealConfig, env: Any = None) -> Runtime:
        built.append(cfg)
        runtime: Runtime = original(cls, cfg, env)
        return runtime

    quotas: list[tuple[str, float]] = []
    real_from_url = RedisQuota.from_url.__func__  # type: ignore[attr-defined]

    def recording(cls: type[RedisQuota], url: str, timeout_s: float = 0.05) -> RedisQuota:
        quotas.append((url, timeout_s))
        quota: RedisQuota = real_from_url(cls, url, timeout_s)
        return quota

    monkeypatch.setattr(Runtime, "from_config", classmethod(counting))
    monkeypatch.setattr(RedisQuota, "from_url", classmethod(recording))
    server = server_module.AuthzServer(server_module.AuthzOptions(str(write_config(tmp_path, redis_timeout_ms=70))))
    assert len(built) == 1  # regression: __init__ and build_authorizer each built one
    assert quotas == [("redis://127.0.0.1:6/0", 0.07)]  # the view's redis_url and deadline
    server.reload()
    assert len(built) == 2 and len(quotas) == 1  # one per reload; the Redis client is kept


def test_the_consumer_command_loads_its_config_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import warnings

    from dynaseal.runtime import views
    from dynaseal.tenancy import source as tenancy_source

    with warnings.catch_warnings():  # kafka-python's own import-time DeprecationWarning (importlib.resources)
        warnings.simplefilter("ignore", DeprecationWarning)
        from callback_consumer import __main__ as consumer_main
    from dynaseal.runtime.views import ConsumerView

    loads: list[str] = []

    def counting_load(path: Any = None, data_dir: str | None = None) -> DynasealConfig:
        loads.append(str(path))
        return load_config(path, data_dir)

    given: list[object] = []

    class Stop(Exception):
        pass

    def fake_consumer(options: object, view: object = None, source: object = None) -> object:
        given.append(view)
        raise Stop  # nothing is started: only how the consumer got its config is under test

    monkeypatch.setattr(views, "load_config", counting_load)
    monkeypatch.setattr(tenancy_source, "load_config", counting_load)
    monkeypatch.setattr(consumer_main, "CallbackConsumer", fake_consumer)
    monkeypatch.setattr(consumer_main, "setup_logging", lambda service: None)  # the session's logging stays
    with pytest.raises(Stop):
        consumer_main.main(["--config", str(write_config(tmp_path))])
    assert len(loads) == 1
    assert len(given) == 1 and isinstance(given[0], ConsumerView)  # regression: it loaded the config again
