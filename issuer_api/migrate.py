"""Bring the issuer database to the newest schema with the bundled Alembic migrations."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str) -> Config:
    """An Alembic config pointing at the bundled scripts and `url` (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Alembic's config is a ConfigParser: a literal '%' (URL-encoded passwords) must be doubled.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_to_head(url: str, engine: Engine | None = None) -> None:
    """Apply every migration not yet applied; a no-op on an up-to-date database."""
    config = alembic_config(url)
    if engine is None:
        command.upgrade(config, "head")
        return
    # Reusing the app's engine keeps its connection settings (SQLite pragmas, pool) for the migration.
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
