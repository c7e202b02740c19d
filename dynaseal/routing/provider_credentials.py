"""Provider keys of one upstream: from env vars or a mounted file, several balanced round-robin.

A file is re-read when it changes (checked at most once a second), so a rotated key is used
from the next request on, without a restart; a file that cannot be read keeps the last keys.
Every key read is remembered by the redactor, so it never reaches a log line.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from pydantic import SecretStr

from dynaseal.redaction import remember_secrets

log = logging.getLogger("dynaseal.authz")
RECHECK_S = 1.0


class CredentialPool:
    """The keys one upstream (or one tenant's route to it) presents, taken in turn."""

    def __init__(self, secrets: tuple[SecretStr, ...] = (), file: Path | None = None) -> None:
        self._keys = tuple(s.get_secret_value() for s in secrets)
        self._file = file
        self._mtime: float | None = None
        self._checked = 0.0
        self._turn: Iterator[int] = itertools.count()
        self._lock = threading.Lock()
        if file is not None:
            self._reload(force=True)

    def _reload(self, force: bool = False) -> None:
        assert self._file is not None
        now = time.monotonic()
        if not force and now - self._checked < RECHECK_S:
            return
        self._checked = now
        try:
            mtime = os.stat(self._file).st_mtime
            if mtime == self._mtime:
                return
            keys = tuple(line.strip() for line in self._file.read_text().splitlines()
                         if line.strip() and not line.lstrip().startswith("#"))
        except OSError as exc:
            log.warning("provider key file unreadable: keeping the last keys", extra={"error": type(exc).__name__})
            return
        remember_secrets(list(keys))
        self._keys, self._mtime = keys, mtime

    def next_key(self) -> str | None:
        """The key for this request (None when the upstream takes none)."""
        if self._file is not None:
            with self._lock:
                self._reload()
        keys = self._keys
        return keys[next(self._turn) % len(keys)] if keys else None
