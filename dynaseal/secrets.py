"""Secrets named by environment variable or mounted file, resolved into `SecretStr` (its repr hides the value).

Every value resolved here is remembered by the process's redactor, so it never reaches a log
line or a dead-lettered event, whatever quotes it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import SecretStr

from dynaseal.redaction import remember_secrets

# `*_env` names with this prefix name a secret held in the tenant store (dynaseal.tenancy), not the environment.
STORED_PREFIX = "dynaseal-store:"
_stored: dict[str, str] = {}


def use_stored_secrets(values: dict[str, str]) -> None:
    """Make the tenant store's secrets (by `STORED_PREFIX` name) resolvable in this process."""
    remember_secrets(list(values.values()))
    _stored.clear()
    _stored.update(values)


class SecretResolver:
    """Resolves `*_env` names, collecting every missing one so a config error lists them all."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.env = os.environ if env is None else env
        self.errors: list[str] = []

    def optional(self, name: str | None, what: str) -> SecretStr | None:
        """The secret named `name` (None when no name is configured); a named but unset one is an error."""
        if not name:
            return None
        if name.startswith(STORED_PREFIX):
            value = _stored.get(name)
            if not value:
                self.errors.append(f"{what}: stored secret {name} is missing from the tenant store")
                return None
        else:
            value = self.env.get(name)
        if not value:
            self.errors.append(f"{what}: environment variable {name} is not set")
            return None
        remember_secrets([value])
        return SecretStr(value)

    def from_file(self, path: str | None, what: str) -> SecretStr | None:
        """The secret in a mounted file (None when no path is configured), read again at every load so a
        rotated Kubernetes Secret takes effect; trailing newlines are not part of it."""
        if not path:
            return None
        try:
            value = Path(path).read_text().rstrip("\r\n")
        except OSError as exc:
            self.errors.append(f"{what}: secret file {path} cannot be read ({exc.strerror or exc})")
            return None
        if not value:
            self.errors.append(f"{what}: secret file {path} is empty")
            return None
        remember_secrets([value])
        return SecretStr(value)

    def reference(self, env_name: str | None, file_path: str | None, what: str) -> SecretStr | None:
        """The secret named by `*_env` or, failing that, by `*_file`."""
        return self.optional(env_name, what) if env_name else self.from_file(file_path, what)


def env_secret(name: str | None, what: str, errors: list[str],
               env: Mapping[str, str] | None = None) -> SecretStr | None:
    """One secret from `env` (default: the process environment); a problem is appended to `errors`."""
    resolver = SecretResolver(env)
    secret = resolver.optional(name, what)
    errors.extend(resolver.errors)
    return secret


def referenced_secret(env_name: str | None, file_path: str | None, what: str, errors: list[str],
                      env: Mapping[str, str] | None = None) -> SecretStr | None:
    """One secret from `env` (default: the process environment), the tenant store or a mounted file;
    problems go to `errors`."""
    resolver = SecretResolver(env)
    secret = resolver.reference(env_name, file_path, what)
    errors.extend(resolver.errors)
    return secret
