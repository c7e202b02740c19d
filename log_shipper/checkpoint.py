"""Where the shipper is in the access log: (inode, offset) of the last acknowledged line, saved atomically."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Offset just past the last line whose event the broker acknowledged, in the file with this inode."""

    inode: int
    offset: int


def load(path: Path) -> Checkpoint | None:
    """The saved checkpoint, or None when there is none (or it is unreadable: start over, repeats are safe)."""
    try:
        raw = json.loads(path.read_text())
        return Checkpoint(int(raw["inode"]), int(raw["offset"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save(path: Path, checkpoint: Checkpoint) -> None:
    """Write the checkpoint so a crash leaves either the old or the new one, never a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as handle:
        json.dump(asdict(checkpoint), handle)
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
