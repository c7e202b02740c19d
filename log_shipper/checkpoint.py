"""Where the shipper is in the access log, saved atomically: positions that name content, not only bytes.

A position is (inode, offset) plus two fingerprints: a hash of the file's first bytes and a hash of
the bytes just before the offset (the last line). A file matches a position only if both hashes
still hold, so a log truncated and regrown past the offset, or a new file that reused the inode,
is recognised as new content and read from its start (repeats are safe; skipping is not).

The saved state holds two positions: `acked` (the broker acknowledged every line before it: where a
restart resumes) and `consumed` (the consumer group committed past every event before it: where a
broker that lost its records makes the shipper read again), and the marks between them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Enough to tell two access logs apart (the first line carries a timestamp and a request id).
HEAD_BYTES = 1024
TAIL_BYTES = 256


def digest(data: bytes) -> str:
    """A short content hash for fingerprints."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Offset just past a line, in the file with this inode whose first `head_len` bytes hash to `head`.

    `head`/`tail` are None in checkpoints written before fingerprints existed: such a position
    is trusted on inode and size alone.
    """

    inode: int
    offset: int
    head: str | None = None
    head_len: int = 0
    tail: str | None = None
    tail_len: int = 0

    def matches(self, fd: int) -> bool:
        """Whether the open file `fd` still holds the content this position was taken in."""
        try:
            st = os.fstat(fd)
            if st.st_size < self.offset:
                return False
            if self.head is not None and digest(os.pread(fd, self.head_len, 0)) != self.head:
                return False
            return self.tail is None or \
                digest(os.pread(fd, self.tail_len, self.offset - self.tail_len)) == self.tail
        except OSError:
            return False


def position(fd: int, offset: int) -> Checkpoint:
    """The fingerprinted position `offset` in the open file `fd` (the bytes before it must be read already)."""
    head_len = min(HEAD_BYTES, offset)
    tail_len = min(TAIL_BYTES, offset)
    return Checkpoint(os.fstat(fd).st_ino, offset, digest(os.pread(fd, head_len, 0)), head_len,
                      digest(os.pread(fd, tail_len, offset - tail_len)), tail_len)


@dataclass(frozen=True, slots=True)
class Mark:
    """All lines up to `at` became records at or below these offsets: {partition: (offset, value digest)}."""

    at: Checkpoint
    offsets: dict[int, tuple[int, str]]
    acked_at: float = 0.0  # wall time the broker acknowledged the line at `at`


@dataclass(slots=True)
class State:
    """Everything the shipper remembers across restarts."""

    acked: Checkpoint | None = None
    consumed: Checkpoint | None = None
    marks: list[Mark] = field(default_factory=list)
    # Wall times the positions were taken: a log file written after one may hold lines never shipped.
    acked_at: float = 0.0
    consumed_at: float = 0.0


def _checkpoint(raw: Any) -> Checkpoint | None:
    if raw is None:
        return None
    return Checkpoint(int(raw["inode"]), int(raw["offset"]), raw.get("head"), int(raw.get("head_len", 0)),
                      raw.get("tail"), int(raw.get("tail_len", 0)))


def load(path: Path) -> State:
    """The saved state; an empty one when there is none or it is unreadable (start over: repeats are safe)."""
    try:
        raw = json.loads(path.read_text())
        if "acked" not in raw:  # the first format: {"inode", "offset"} of the acknowledged line
            old = _checkpoint(raw)
            return State(old, old)
        marks = [Mark(at, {int(p): (int(o), str(d)) for p, (o, d) in m["offsets"].items()},
                      float(m.get("acked_at", 0.0)))
                 for m in raw.get("marks", []) if (at := _checkpoint(m["at"])) is not None]
        return State(_checkpoint(raw["acked"]), _checkpoint(raw.get("consumed")), marks,
                     float(raw.get("acked_at", 0.0)), float(raw.get("consumed_at", 0.0)))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return State()


def save(path: Path, state: State) -> None:
    """Write the state so a crash leaves either the old or the new one, never a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "acked": asdict(state.acked) if state.acked else None,
        "acked_at": state.acked_at,
        "consumed": asdict(state.consumed) if state.consumed else None,
        "consumed_at": state.consumed_at,
        "marks": [{"at": asdict(m.at), "offsets": {str(p): list(v) for p, v in m.offsets.items()},
                   "acked_at": m.acked_at} for m in state.marks],
        "saved_at": time.time(),
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as handle:
        json.dump(body, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    # The rename itself must survive a power cut too.
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
