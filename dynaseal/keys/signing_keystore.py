"""The issuer's signing keys on disk: one active Ed25519 key plus older ones kept for verification.

Layout under `<data_dir>/issuer/`: `signing_keys.json` (private, mode 0600) and `jwks.json`
(public, what the gateway reads via `jwks_file` or the issuer's `/.well-known/jwks.json`).
Rotation adds a key and makes it active; an old key stays published until every key it
signed has expired (`retire_after`), so rotation never breaks a key in flight.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynaseal.keys.mint import SigningKey


@dataclass(frozen=True, slots=True)
class StoredKey:
    """A signing key with its retirement time (None while it may still sign)."""

    key: SigningKey
    retire_after: float | None


def _write_atomic(path: Path, text: str, mode: int) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class SigningKeyStore:
    """Load, create, rotate and publish the issuer's signing keys."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.private_path = directory / "signing_keys.json"
        self.jwks_path = directory / "jwks.json"

    def load(self) -> list[StoredKey]:
        """All stored keys, newest last; empty if none yet."""
        if not self.private_path.exists():
            return []
        doc = json.loads(self.private_path.read_text())
        return [StoredKey(SigningKey.from_private_jwk(e["jwk"], e.get("created_at", 0.0)), e.get("retire_after"))
                for e in doc["keys"]]

    def ensure(self) -> SigningKey:
        """The active key, creating the first one if the store is empty."""
        keys = self.load()
        if not keys:
            return self.rotate(max_key_ttl=0)
        self.publish(keys)
        return keys[-1].key

    def active(self) -> SigningKey:
        """The key new dynamic keys are signed with."""
        keys = self.load()
        if not keys:
            raise FileNotFoundError(f"no signing keys in {self.private_path}; run `dynaseal keys init`")
        return keys[-1].key

    def rotate(self, max_key_ttl: int) -> SigningKey:
        """Add a new active key; the previous one retires once keys it signed (≤ max_key_ttl) expire."""
        now = time.time()
        keys = [k for k in self.load() if k.retire_after is None or k.retire_after > now]
        keys = [StoredKey(k.key, k.retire_after if k.retire_after is not None else now + max_key_ttl)
                for k in keys]
        new_key = SigningKey.generate()
        keys.append(StoredKey(new_key, None))
        self._save(keys)
        return new_key

    def remove(self, kid: str) -> bool:
        """Drop a key at once (compromise); keys it signed stop verifying."""
        keys = self.load()
        kept = [k for k in keys if k.key.kid != kid]
        if len(kept) == len(keys) or not kept:
            return False
        self._save(kept)
        return True

    def public_jwks(self, keys: list[StoredKey] | None = None) -> dict[str, Any]:
        """The JWKS of every key still published."""
        now = time.time()
        keys = self.load() if keys is None else keys
        return {"keys": [k.key.public_jwk() for k in keys if k.retire_after is None or k.retire_after > now]}

    def publish(self, keys: list[StoredKey]) -> None:
        """Rewrite jwks.json from the given keys."""
        _write_atomic(self.jwks_path, json.dumps(self.public_jwks(keys), indent=2), 0o644)

    def _save(self, keys: list[StoredKey]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        doc = {"keys": [{"jwk": k.key.private_jwk(), "created_at": k.key.created_at,
                         "retire_after": k.retire_after} for k in keys]}
        _write_atomic(self.private_path, json.dumps(doc, indent=2), 0o600)
        self.publish(keys)
