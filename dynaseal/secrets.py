"""Secrets named by environment variable, resolved into `SecretStr` (its repr hides the value).

Every value resolved here is remembered by the process's redactor, so it never reaches a log
line or a dead-lettered event, whatever quotes it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import SecretStr

from dynaseal.redaction import remember_secrets


class SecretResolver:
    """Resolves `*_env` names, collecting every missing one so a config error lists them all."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.env = os.environ if env is None else env
        self.errors: list[str] = []

    def optional(self, name: str | None, what: str) -> SecretStr | None:
        """The secret named `name` (None when no name is configured); a named but unset one is an error."""
        if not name:
            return None
        value = self.env.get(name)
        if not value:
            self.errors.append(f"{what}: environment variable {name} is not set")
            return None
        remember_secrets([value])
        return SecretStr(value)


def env_secret(name: str | None, what: str, errors: list[str],
               env: Mapping[str, str] | None = None) -> SecretStr | None:
    """One secret from `env` (default: the process environment); a problem is appended to `errors`."""
    resolver = SecretResolver(env)
    secret = resolver.optional(name, what)
    errors.extend(resolver.errors)
    return secret
