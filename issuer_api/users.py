"""Accounts: bcrypt password checks, lookups, and the seed's demo users."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import bcrypt
from sqlalchemy import select
from sqlalchemy.orm import Session

from issuer_api.store import ROLE_END_USER, ROLE_TENANT, User

# bcrypt refuses longer input (bcrypt>=5 raises); such a password can never match a stored hash.
MAX_PASSWORD_BYTES = 72
# A real hash compared against when the username is unknown, so a miss costs the same time as a hit.
_DUMMY_HASH = b"$2b$12$D9Zw3l84onPNf.UF739FeuQkstgmNo5HHlGCrkaZQp.fFo64OHwB2"

# The seed's demo accounts with the seed's own ids, e-mails and bcrypt hashes (user1:user1, client1:client1).
DEMO_USERS = (
    ("671249a93f1cf2f8bf9b2b82", "user1", "user1@example.com",
     "$2b$12$QFk6uHDBM5s69uSXrchivOC5SbpTUGV4tjmWz0nRvPSiMt.WAZVhC", ROLE_TENANT),
    ("671247fadb2faa4fec2c6f39", "client1", "client1@example.com",
     "$2b$12$fWy.Yjs9x5zSRirRibjliO4GX66GSO/.GuG7he9lIatuiNDoPPb9a", ROLE_END_USER),
)


@dataclass(frozen=True, slots=True)
class Account:
    """A logged-in user as the endpoints need it, detached from any DB session."""

    id: str
    username: str
    role: str
    tenant_id: str

    @property
    def is_tenant(self) -> bool:
        """Whether this is the tenant's own account (sees and revokes all of the tenant's keys)."""
        return self.role == ROLE_TENANT

    @classmethod
    def of(cls, user: User) -> Account:
        """The account view of a user row."""
        return cls(user.id, user.username, user.role, user.tenant_id)


def hash_password(password: str) -> str:
    """A bcrypt hash of the password."""
    raw = password.encode()
    if len(raw) > MAX_PASSWORD_BYTES:
        raise ValueError(f"password longer than {MAX_PASSWORD_BYTES} bytes")
    return bcrypt.hashpw(raw, bcrypt.gensalt()).decode()


def _password_matches(password: str, stored_hash: bytes) -> bool:
    raw = password.encode()
    if len(raw) > MAX_PASSWORD_BYTES:
        return False
    try:
        return bcrypt.checkpw(raw, stored_hash)
    except ValueError:  # a corrupt stored hash is a failed login, not a crash
        return False


def normalize_email(email: str) -> str:
    """The form e-mails are stored and compared in."""
    return email.strip().lower()


def find_login(db: Session, login: str) -> User | None:
    """The one user a login name designates: by e-mail when it has an `@` and one matches, else by username.

    Exactly one candidate is ever checked, so a username that looks like someone's e-mail cannot
    make one password open two accounts.
    """
    if "@" in login:
        user = db.scalar(select(User).where(User.email == normalize_email(login)))
        if user is not None:
            return user
    return db.scalar(select(User).where(User.username == login))


def authenticate(db: Session, login: str, password: str) -> Account | None:
    """The account if the username or e-mail exists and the password matches, else None."""
    user = find_login(db, login)
    if user is None:
        _password_matches(password, _DUMMY_HASH)
        return None
    return Account.of(user) if _password_matches(password, user.password_hash.encode()) else None


def account_by_id(db: Session, user_id: str) -> Account | None:
    """The account with this id, if it still exists."""
    user = db.get(User, user_id)
    return Account.of(user) if user is not None else None


def create_user(db: Session, username: str, password: str, role: str, tenant_id: str,
                email: str | None = None) -> Account:
    """Add a user with a fresh id (the caller commits)."""
    user = User(id=secrets.token_hex(12), username=username, password_hash=hash_password(password),
                role=role, tenant_id=tenant_id, email=normalize_email(email) if email else None)
    db.add(user)
    db.flush()
    return Account.of(user)


def ensure_demo_users(db: Session, tenant_id: str) -> list[str]:
    """Create the seed's demo users that are absent, give existing ones their seed e-mail if they
    have none (and nobody else holds it); return the usernames created."""
    created = []
    for user_id, username, email, password_hash, role in DEMO_USERS:
        existing = db.scalar(select(User).where((User.username == username) | (User.id == user_id)))
        email_taken = db.scalar(select(User.id).where(User.email == email)) is not None
        if existing is None:
            db.add(User(id=user_id, username=username, email=None if email_taken else email,
                        password_hash=password_hash, role=role, tenant_id=tenant_id))
            created.append(username)
        elif existing.email is None and not email_taken:
            existing.email = email
        db.flush()
    return created
