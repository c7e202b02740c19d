"""The issuer's database: users, the keys it minted (never the keys themselves), received callbacks and
the families of refresh tokens (their ids, never the tokens).

SQLite under `<data_dir>/issuer/issuer.db` by default; any SQLAlchemy URL via `issuer.database_url`.
The schema is owned by the Alembic migrations in `issuer_api/migrations/`; these models mirror them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Engine, ForeignKey, Index, Integer, String, Text, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from dynaseal.config import DynasealConfig
from dynaseal.runtime.locations import paths_of

ROLE_TENANT = "tenant"
ROLE_END_USER = "end_user"


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def as_utc(moment: datetime | None) -> datetime | None:
    """SQLite hands datetimes back naive: they were stored as UTC, so say so."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    """Declarative base of the issuer tables."""


class User(Base):
    """An account that can log in: the tenant's own account or one of its end users."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    username: Mapped[str] = mapped_column(String(128), unique=True)
    # Stored lower-case; the original client logs in with it in the username field.
    email: Mapped[str | None] = mapped_column(String(254), nullable=True, unique=True, index=True)
    password_hash: Mapped[str] = mapped_column("password", String(128))
    role: Mapped[str] = mapped_column(String(16))
    tenant_id: Mapped[str] = mapped_column(String(128), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class MintedKey(Base):
    """A dynamic key the issuer signed: its id, owner, scope and expiry (the token is never stored)."""

    __tablename__ = "minted_keys"

    jti: Mapped[str] = mapped_column(String(128), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    kid: Mapped[str] = mapped_column(String(64))
    scope: Mapped[dict[str, Any]] = mapped_column(JSON)
    exp: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    # The mint rate counts a user's keys of the last minute.
    __table_args__ = (Index("ix_minted_keys_user_created", "user_id", "created_at"),)


class Callback(Base):
    """One usage callback from the gateway, stored once per `webhook-id`."""

    __tablename__ = "callbacks"

    # A surrogate integer id gives /usage a stable, cheap pagination cursor.
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    webhook_id: Mapped[str] = mapped_column(String(256), unique=True)
    event_id: Mapped[str | None] = mapped_column(String(256), nullable=True)
    jti: Mapped[str | None] = mapped_column(String(128), nullable=True, index=True)
    sub: Mapped[str | None] = mapped_column(String(256), nullable=True, index=True)
    tokens: Mapped[int] = mapped_column(Integer, default=0)
    usage: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    content: Mapped[str | None] = mapped_column(Text, nullable=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # The callback's `cost`: an exact decimal string (never a float) and its currency; null when unpriced.
    cost_amount: Mapped[str | None] = mapped_column(String(64), nullable=True)
    cost_currency: Mapped[str | None] = mapped_column(String(3), nullable=True)


class RefreshFamily(Base):
    """The refresh tokens descended from one login (RFC 9700 §4.14): revoked together on reuse."""

    __tablename__ = "refresh_families"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)


class RefreshToken(Base):
    """One refresh token the issuer handed out (its id, never the token): usable once, then rotated."""

    __tablename__ = "refresh_tokens"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    family_id: Mapped[str] = mapped_column(ForeignKey("refresh_families.id"), index=True)
    exp: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


def database_url(cfg: DynasealConfig) -> str:
    """The configured database URL, else the SQLite file under the data directory."""
    if cfg.issuer is not None and cfg.issuer.database_url:
        return cfg.issuer.database_url
    path = paths_of(cfg).issuer_db
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path.resolve()}"


def _sqlite_pragmas(synchronous: str) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        # WAL lets the usage reader run while a callback is being written.
        cursor.execute("PRAGMA journal_mode=WAL")
        # In WAL mode, NORMAL leaves the sync per commit out (the callback receiver's largest cost).
        cursor.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
        cursor.close()
    return on_connect


def make_engine(url: str, sqlite_synchronous: str = "normal") -> Engine:
    """An engine for the URL; SQLite gets foreign keys, WAL, the chosen sync level and a busy timeout."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 15})
        event.listen(engine, "connect", _sqlite_pragmas(sqlite_synchronous))
        return engine
    return create_engine(url, pool_pre_ping=True)


def make_sessions(engine: Engine) -> sessionmaker[Session]:
    """A session factory whose objects stay readable after commit."""
    return sessionmaker(engine, expire_on_commit=False)
