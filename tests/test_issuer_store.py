"""issuer_api storage and start-up: migrations, demo users, DB location, CLI config errors, log hygiene."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, func, inspect, select
from test_issuer_support import assert_error, bearer, issuer_client, issuer_config, login

from dynaseal.config import ConfigError, bundled_dev_config
from dynaseal.logs import JsonFormatter
from issuer_api.__main__ import main
from issuer_api.app import create_app, issuer_state
from issuer_api.migrate import alembic_config, upgrade_to_head
from issuer_api.store import Base, User


def test_migrations_build_exactly_the_models_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade_to_head(url)
    upgrade_to_head(url)  # idempotent
    engine = create_engine(url)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        assert conn.exec_driver_sql("select version_num from alembic_version").scalar() == "0004_refresh_families"
    tables = set(inspect(engine).get_table_names())
    assert {"users", "minted_keys", "callbacks", "refresh_families", "refresh_tokens"} <= tables
    engine.dispose()


def test_a_database_from_before_emails_is_upgraded_and_demo_users_get_theirs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'issuer' / 'issuer.db'}"
    (tmp_path / "issuer").mkdir()
    command.upgrade(alembic_config(url), "0001_initial")
    engine = create_engine(url)
    with engine.begin() as conn:  # the demo users as the first schema stored them
        conn.exec_driver_sql(
            "insert into users (id, username, password, role, tenant_id, created_at) values "
            "('671247fadb2faa4fec2c6f39', 'client1', "
            "'$2b$12$fWy.Yjs9x5zSRirRibjliO4GX66GSO/.GuG7he9lIatuiNDoPPb9a', 'end_user', 't', '2025-01-01')")
    engine.dispose()
    _cfg, client = issuer_client(tmp_path)
    try:
        with issuer_state(client.app).sessions() as db:  # type: ignore[arg-type]
            emails = {u.username: u.email for u in db.scalars(select(User))}
        assert emails == {"client1": "client1@example.com", "user1": "user1@example.com"}
        login(client, "client1@example.com", "client1")
    finally:
        client.__exit__(None, None, None)


def test_default_locations_and_demo_users_created_once(tmp_path: Path) -> None:
    cfg, client = issuer_client(tmp_path)
    client.__exit__(None, None, None)
    assert (tmp_path / "issuer" / "issuer.db").exists()
    assert (tmp_path / "issuer" / "signing_keys.json").stat().st_mode & 0o077 == 0
    assert (tmp_path / "issuer" / "jwks.json").exists()

    state = issuer_state(create_app(cfg))  # a restart on the same data dir
    with state.sessions() as db:
        users = {u.username: u for u in db.scalars(select(User))}
    assert set(users) == {"user1", "client1"}
    assert users["user1"].id == "671249a93f1cf2f8bf9b2b82" and users["user1"].role == "tenant"
    assert users["client1"].role == "end_user"
    assert all(u.password_hash.startswith("$2b$") for u in users.values())  # bcrypt, never plaintext
    state.close()


def test_database_url_and_demo_users_switch(tmp_path: Path) -> None:
    cfg = issuer_config(tmp_path / "data")
    assert cfg.issuer is not None
    other = tmp_path / "elsewhere.db"
    issuer = cfg.issuer.model_copy(update={"database_url": f"sqlite:///{other}", "demo_users": False})
    state = issuer_state(create_app(cfg.model_copy(update={"issuer": issuer})))
    assert other.exists() and not (tmp_path / "data" / "issuer" / "issuer.db").exists()
    with state.sessions() as db:
        assert db.scalar(select(func.count()).select_from(User)) == 0
    state.close()


def test_missing_session_secret_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dev = issuer_config(tmp_path)
    assert dev.issuer is not None
    # A name neither the environment nor dev.env sets (dev.env supplies the dev config's own).
    issuer = dev.issuer.model_copy(update={"session_secret_env": "DYNASEAL_T_UNSET_SESSION_SECRET"})
    cfg = dev.model_copy(update={"issuer": issuer})
    assert cfg.issuer is not None
    monkeypatch.delenv(cfg.issuer.session_secret_env, raising=False)
    with pytest.raises(ConfigError, match=cfg.issuer.session_secret_env):
        create_app(cfg)
    monkeypatch.setenv(cfg.issuer.session_secret_env, "short")
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        create_app(cfg)


def test_cli_reports_config_errors_and_returns_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(tmp_path / "absent.yaml")]) == 2
    assert "config error" in capsys.readouterr().err
    raw = yaml.safe_load(bundled_dev_config().read_text())
    del raw["issuer"]
    raw["env_file"] = str(bundled_dev_config().parent / "dev.env")
    raw["gateway"]["data_dir"] = str(tmp_path / "data")
    path = tmp_path / "no-issuer.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["--config", str(path)]) == 2
    assert "no `issuer` section" in capsys.readouterr().err


def test_logs_never_carry_passwords_tokens_or_keys(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    _cfg, client = issuer_client(tmp_path)
    try:
        pair = login(client, "client1")
        wrong = {"username": "client1", "password": "hunter2-secret"}
        assert_error(client.post("/user/login", data=wrong), 401)
        key = client.post("/key/create", headers=bearer(pair["access_token"])).json()
        client.post("/key/revoke", headers=bearer(pair["access_token"]), json={"jti": key["jti"]})
    finally:
        client.__exit__(None, None, None)
    formatter = JsonFormatter("test")
    text = "\n".join(formatter.format(r) + r.getMessage() for r in caplog.records)
    assert key["jti"] in text  # key ids are logged...
    for secret in ("hunter2-secret", pair["access_token"], pair["refresh_token"], key["token"]):
        assert secret not in text  # ...keys, tokens and passwords never
