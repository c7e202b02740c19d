"""The tenant store: tenants created through the admin API, secrets it holds, and one config generation.

SQLite under `{data_dir}/admin/admin.db` by default; any SQLAlchemy URL (PostgreSQL) through
`admin.database_url`. Only portable SQL: every write bumps the generation in the same transaction,
so a reader that sees generation N sees every change up to N.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, Boolean, Engine, Float, Integer, String, Text, create_engine, event, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from dynaseal.backoff import Backoff
from dynaseal.config import DynasealConfig, admin_database_url, expand_path

PURPOSE_SEED = "seed"
PURPOSE_CALLBACK = "callback"
# Seed-format secrets of one tenant that verify without an end set: each is tried on a kid-less key, so
# the oldest beyond this many stop verifying when a new one is added.
MAX_OPEN_SEED_SECRETS = 8
# The losers of a create race try again after up to 0.2 s, then 0.4 s (jitter: they do not collide again).
CREATE_RACE_BACKOFF = Backoff(0.2, 0.4)


class Base(DeclarativeBase):
    """Declarative base of the tenant store's tables."""


class GenerationRow(Base):
    """The one row holding the store's config generation."""

    __tablename__ = "tenancy_generation"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class TenantRow(Base):
    """A tenant of the store (its document), or a file tenant's overrides (no document)."""

    __tablename__ = "tenancy_tenants"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    # The tenant as TenantConfig JSON; secret values are never in it, only `dynaseal-store:` references.
    document: Mapped[str | None] = mapped_column(Text, nullable=True)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    # After this (epoch seconds) the file's own seed-format secret no longer verifies (a rotation's end).
    file_seed_retires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    updated_at: Mapped[float] = mapped_column(Float)


class SecretRow(Base):
    """A secret value the store holds for a tenant: a seed-format signing secret or a webhook secret."""

    __tablename__ = "tenancy_secrets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(String(128), index=True)
    purpose: Mapped[str] = mapped_column(String(16))
    value: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)
    # Seed secrets: no longer verify after this. Callback secrets: the one before this keeps signing until then.
    retires_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class AccountRow(Base):
    """A backend's account on the gateway (the seed's registration): e-mail, bcrypt hash, its tenant."""

    __tablename__ = "tenancy_accounts"

    email: Mapped[str] = mapped_column(String(254), primary_key=True)
    username: Mapped[str] = mapped_column(String(128))
    password_hash: Mapped[str] = mapped_column(String(128))
    tenant_id: Mapped[str] = mapped_column(String(128), index=True)


@dataclass(frozen=True)
class StoredSecret:
    """One secret row, detached from its session."""

    id: int
    tenant_id: str
    purpose: str
    value: str
    created_at: float
    retires_at: float | None


@dataclass(frozen=True)
class StoredTenant:
    """One tenant row, detached: the document parsed (None for a file tenant's overrides)."""

    id: str
    document: dict[str, Any] | None
    disabled: bool
    file_seed_retires_at: float | None


@dataclass(frozen=True)
class Snapshot:
    """Everything the store holds at one generation."""

    generation: int
    tenants: dict[str, StoredTenant]
    secrets: tuple[StoredSecret, ...]


def _sqlite_wal(connection: Any, record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def store_url(cfg: DynasealConfig) -> str:
    """The store's SQLAlchemy URL: `admin.database_url` (or `_env`), else SQLite in {data_dir}/admin/admin.db."""
    if url := admin_database_url(cfg):  # admin.database_url or admin.database_url_env
        return url
    path = Path(expand_path("{data_dir}", cfg)).resolve() / "admin" / "admin.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


class TenantStore:
    """Reads and writes the tenant store; every write is one transaction that bumps the generation."""

    def __init__(self, url: str) -> None:
        sqlite = url.startswith("sqlite")
        self.engine: Engine = create_engine(url, connect_args={"timeout": 10} if sqlite else {}, pool_pre_ping=True)
        if sqlite:
            # WAL: the services' once-a-second reads never wait for the admin service's writes.
            event.listen(self.engine, "connect", _sqlite_wal)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        for attempt in range(3):
            # Several services may open a new store at once: the loser of a create race tries again.
            try:
                Base.metadata.create_all(self.engine)
                with self.sessions.begin() as session:
                    if session.get(GenerationRow, 1) is None:
                        session.add(GenerationRow(id=1, value=0))
                break
            except (IntegrityError, OperationalError):
                if attempt == 2:
                    raise
                time.sleep(CREATE_RACE_BACKOFF.delay(attempt + 1))

    def generation(self) -> int:
        """The current generation (one cheap read: what every service polls)."""
        with self.sessions() as session:
            return int(session.execute(select(GenerationRow.value).where(GenerationRow.id == 1)).scalar_one())

    def snapshot(self) -> Snapshot:
        """Every tenant and secret, read in one transaction with the generation they belong to."""
        with self.sessions.begin() as session:
            generation = int(session.execute(select(GenerationRow.value).where(GenerationRow.id == 1)).scalar_one())
            tenants = {row.id: StoredTenant(row.id, json.loads(row.document) if row.document else None,
                                            row.disabled, row.file_seed_retires_at)
                       for row in session.scalars(select(TenantRow))}
            secrets = tuple(StoredSecret(r.id, r.tenant_id, r.purpose, r.value, r.created_at, r.retires_at)
                            for r in session.scalars(select(SecretRow).order_by(SecretRow.id)))
        return Snapshot(generation, tenants, secrets)

    def _bump(self, session: Session) -> int:
        session.execute(update(GenerationRow).where(GenerationRow.id == 1).values(value=GenerationRow.value + 1))
        return int(session.execute(select(GenerationRow.value).where(GenerationRow.id == 1)).scalar_one())

    def _row(self, session: Session, tenant_id: str) -> TenantRow:
        row = session.get(TenantRow, tenant_id)
        if row is None:
            row = TenantRow(id=tenant_id, document=None, disabled=False, updated_at=time.time())
            session.add(row)
        return row

    def put_tenant(self, tenant_id: str, document: dict[str, Any] | None, secrets: dict[str, str]) -> int:
        """Create or replace a tenant's document (None: keep it) and add secrets by purpose; the new generation."""
        with self.sessions.begin() as session:
            row = self._row(session, tenant_id)
            if document is not None:
                row.document = json.dumps(document, sort_keys=True)
            row.updated_at = time.time()
            for purpose, value in secrets.items():
                session.add(SecretRow(tenant_id=tenant_id, purpose=purpose, value=value, created_at=time.time()))
            if PURPOSE_SEED in secrets:
                session.flush()
                self._retire_oldest_seeds(session, tenant_id)
            return self._bump(session)

    def _retire_oldest_seeds(self, session: Session, tenant_id: str) -> None:
        open_rows = list(session.scalars(select(SecretRow).where(
            SecretRow.tenant_id == tenant_id, SecretRow.purpose == PURPOSE_SEED,
            SecretRow.retires_at.is_(None)).order_by(SecretRow.id.desc())))
        for old in open_rows[MAX_OPEN_SEED_SECRETS:]:
            old.retires_at = time.time()
        # A retired secret never verifies again: dropped, so a backend creating secrets (api_key/create) does not
        # grow the snapshot every service reads on each change without end.
        session.query(SecretRow).filter(SecretRow.tenant_id == tenant_id, SecretRow.purpose == PURPOSE_SEED,
                                        SecretRow.retires_at <= time.time()).delete(synchronize_session=False)

    def set_disabled(self, tenant_id: str, disabled: bool) -> int:
        """Disable or enable a tenant (a store or a file tenant); the new generation."""
        with self.sessions.begin() as session:
            row = self._row(session, tenant_id)
            row.disabled = disabled
            row.updated_at = time.time()
            return self._bump(session)

    def rotate_secret(self, tenant_id: str, purpose: str, value: str, grace_s: float, *,
                      retire_file_seed: bool = False) -> int:
        """Add a new secret. Seed: earlier seed secrets (and the file's, if asked) stop verifying after
        `grace_s`. Callback: the previous secret keeps signing beside the new one for `grace_s`."""
        now = time.time()
        with self.sessions.begin() as session:
            if purpose == PURPOSE_SEED:
                for old in session.scalars(select(SecretRow).where(SecretRow.tenant_id == tenant_id,
                                                                   SecretRow.purpose == PURPOSE_SEED)):
                    if old.retires_at is None or old.retires_at > now + grace_s:
                        old.retires_at = now + grace_s
                if retire_file_seed:
                    self._row(session, tenant_id).file_seed_retires_at = now + grace_s
            session.add(SecretRow(tenant_id=tenant_id, purpose=purpose, value=value, created_at=now,
                                  retires_at=None if purpose == PURPOSE_SEED else now + grace_s))
            return self._bump(session)

    def add_account(self, email: str, username: str, password_hash: str, tenant_id: str) -> None:
        """Create a backend account unless one with this e-mail exists (no generation change: not config)."""
        with self.sessions.begin() as session:
            if session.get(AccountRow, email.lower()) is None:
                session.add(AccountRow(email=email.lower(), username=username, password_hash=password_hash,
                                       tenant_id=tenant_id))

    def account(self, login: str) -> AccountRow | None:
        """The account with this e-mail (or username), detached."""
        with self.sessions() as session:
            row = session.get(AccountRow, login.lower())
            if row is None:
                row = session.scalars(select(AccountRow).where(AccountRow.username == login)).first()
            return row

    def close(self) -> None:
        """Release the connection pool."""
        self.engine.dispose()

    def create_tenant(self, tenant_id: str, document: dict[str, Any], secrets: dict[str, str]) -> int | None:
        """`put_tenant` for an id the store holds no tenant document for, checked in the same transaction as
        the write; None (nothing written) when it holds one: two creations of one id never merge."""
        try:
            with self.sessions.begin() as session:
                row = session.get(TenantRow, tenant_id)
                if row is not None and row.document is not None:
                    return None
                row = self._row(session, tenant_id)
                row.document = json.dumps(document, sort_keys=True)
                row.updated_at = time.time()
                for purpose, value in secrets.items():
                    session.add(SecretRow(tenant_id=tenant_id, purpose=purpose, value=value, created_at=time.time()))
                return self._bump(session)
        except (IntegrityError, OperationalError):
            # Another writer created the row between this transaction's read and its write (SQLite's busy
            # snapshot, PostgreSQL's unique key): the same answer as finding it.
            with self.sessions() as session:
                row = session.get(TenantRow, tenant_id)
                if row is not None and row.document is not None:
                    return None
            raise
