"""Size-based rotation of Envoy's access log, done by the shipper so the log never grows without bound.

Past `gateway.access_log_max_bytes` the log is renamed to `access.log.<UTC timestamp>` and Envoy is
asked to reopen its logs (admin `POST /reopen_logs`); Envoy writes the renamed file until then, and
the tailer drains it to its end before it follows the new one. A rotated file is deleted only once
the consumer group has committed every event of it: the `consumed` position lies in a later file.
"""

from __future__ import annotations

import logging
import os
import re
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from log_shipper import metrics
from log_shipper.checkpoint import Checkpoint
from log_shipper.tailer import find, log_files

log = logging.getLogger("log_shipper")
CHECK_EVERY_S = 1.0
WARN_EVERY_S = 60.0
ROTATED = re.compile(r"\.\d{8}T\d{6}\.\d{6}Z$")


def rotated_name(path: Path, now: datetime | None = None) -> Path:
    """Where the log goes when rotated: `<name>.<YYYYmmddTHHMMSS.ffffff>Z` (sorts by time)."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S.%fZ")
    return path.with_name(f"{path.name}.{stamp}")


def ours(path: Path) -> list[Path]:
    """The rotated files this shipper made, oldest first."""
    return sorted(p for p in log_files(path) if ROTATED.search(p.name))


class Rotator:
    """Rotates the log past `max_bytes` through Envoy's admin API; deletes rotated files once consumed."""

    def __init__(self, path: Path, max_bytes: int, admin_url: str) -> None:
        self.path, self.max_bytes, self.admin_url = path, max_bytes, admin_url.rstrip("/")
        self._checked_at = 0.0
        self._warned_at = -WARN_EVERY_S
        self._reopen_pending = False

    def _warn(self, message: str, **extra: object) -> None:
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_S:
            self._warned_at = now
            log.warning(message, extra=extra)

    def _reopen(self) -> bool:
        try:
            ok = httpx.post(f"{self.admin_url}/reopen_logs", timeout=2.0).status_code == 200
        except httpx.HTTPError as exc:
            self._warn("envoy did not reopen its logs; retrying", error=str(exc))
            ok = False
        self._reopen_pending = not ok
        return ok

    def _admin_ready(self) -> bool:
        try:
            return httpx.get(f"{self.admin_url}/ready", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def check(self, consumed: Checkpoint | None, reading_inode: int | None) -> None:
        """Rotate if due, then delete what is consumed (at most every CHECK_EVERY_S)."""
        now = time.monotonic()
        if now - self._checked_at < CHECK_EVERY_S:
            return
        self._checked_at = now
        self.maybe_rotate()
        self.prune(consumed, reading_inode)

    def maybe_rotate(self) -> bool:
        """Rename the log and have Envoy reopen it once it is past max_bytes; True if rotated."""
        if self.max_bytes <= 0:
            return False
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            if self._reopen_pending:  # renamed, but Envoy did not reopen yet: it still writes the old file
                self._reopen()
            return False
        if size < self.max_bytes:
            return False
        # Renaming without a reopen would leave Envoy on the old file for good.
        if not self._admin_ready():
            self._warn("access log past its maximum size, but envoy's admin API is unreachable; not rotating",
                       size=size, admin=self.admin_url)
            return False
        target = rotated_name(self.path)
        os.rename(self.path, target)
        metrics.ROTATIONS.inc()
        log.info("rotated the access log", extra={"to": str(target), "bytes": size})
        self._reopen()
        return True

    def prune(self, consumed: Checkpoint | None, reading_inode: int | None) -> list[Path]:
        """Delete the rotated files older than the one holding `consumed` (every event of them is committed)."""
        rotated = ours(self.path)
        if consumed is None or not rotated:
            return []
        found = find(consumed, log_files(self.path))
        if found is None:
            return []
        holder, handle = found
        handle.close()
        deleted = []
        for candidate in rotated:
            # The file holding `consumed`, and anything newer, may still have lines to repeat.
            if candidate == holder or (holder != self.path and candidate.name >= holder.name):
                break
            try:
                if candidate.stat().st_ino == reading_inode:
                    break
                candidate.unlink()
                deleted.append(candidate)
            except FileNotFoundError:
                continue
        if deleted:
            log.info("deleted consumed rotated logs", extra={"files": [str(p) for p in deleted]})
        return deleted
