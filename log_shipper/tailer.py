"""Read complete lines from Envoy's access log as it grows, across rotation (new inode) and truncation."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from log_shipper.checkpoint import Checkpoint

CHUNK_BYTES = 256 * 1024
# After a rotation Envoy keeps writing to the old file until it reopens its logs: wait this long
# with the old file quiet before moving to the new one.
ROTATION_GRACE_S = 1.0


@dataclass(frozen=True, slots=True)
class Line:
    """One complete line; `end` is the offset just past its newline in the file with `inode`."""

    data: bytes
    inode: int
    end: int


class LogTailer:
    """Yields complete lines in file order; `seek` goes back to a checkpoint (after a failed send)."""

    def __init__(self, path: Path, start: Checkpoint | None, max_line_bytes: int = 1 << 20) -> None:
        self.path = path
        self.max_line_bytes = max_line_bytes
        self.oversized_lines = 0
        self._start = start
        self._file: BinaryIO | None = None
        self._inode = 0
        self._pos = 0  # offset just past the bytes read from _file
        self._partial = b""  # an incomplete last line (Envoy is mid-write)
        self._discarding = False  # inside a line longer than max_line_bytes
        self._rotation_seen: float | None = None

    def seek(self, checkpoint: Checkpoint | None) -> None:
        """Continue just after `checkpoint` (the start of the current file when None)."""
        self.close()
        self._start = checkpoint

    def close(self) -> None:
        """Close the open file, if any."""
        if self._file is not None:
            self._file.close()
        self._file, self._partial, self._discarding, self._rotation_seen = None, b"", False, None

    def _with_inode(self, inode: int) -> Path | None:
        """The log or a rotated sibling of it (access.log.1, …) that has this inode."""
        for candidate in [self.path, *sorted(self.path.parent.glob(self.path.name + "?*"))]:
            try:
                if candidate.stat().st_ino == inode:
                    return candidate
            except OSError:
                continue
        return None

    def _use(self, handle: BinaryIO, offset: int) -> None:
        handle.seek(offset)
        self._file, self._inode, self._pos = handle, os.fstat(handle.fileno()).st_ino, offset
        self._partial, self._discarding, self._rotation_seen = b"", False, None

    def _open(self) -> bool:
        start, self._start = self._start, None
        found = self._with_inode(start.inode) if start is not None else None
        if start is not None and found is not None:
            handle = found.open("rb")
            size = os.fstat(handle.fileno()).st_size
            # Shorter than the checkpoint: truncated since, so everything in it is new.
            self._use(handle, start.offset if start.offset <= size else 0)
            return True
        try:
            self._use(self.path.open("rb"), 0)
        except FileNotFoundError:
            self._start = start
            return False
        return True

    def _switched(self) -> bool:
        """At end of file: move to a new file after rotation, or to the start after truncation."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False  # rotated away and not recreated yet: keep reading the old one
        if st.st_ino == self._inode:
            if st.st_size < self._pos:
                assert self._file is not None
                self._use(self._file, 0)
                return True
            return False
        now = time.monotonic()
        if self._rotation_seen is None:
            self._rotation_seen = now
        if now - self._rotation_seen < ROTATION_GRACE_S:
            return False
        assert self._file is not None
        self._file.close()
        self._use(self.path.open("rb"), 0)
        return True

    def _split(self, chunk: bytes) -> list[Line]:
        buffer = self._partial + chunk
        offset = self._pos - len(buffer)
        pieces = buffer.split(b"\n")
        self._partial = pieces.pop()
        lines = []
        for piece in pieces:
            offset += len(piece) + 1
            if self._discarding or len(piece) > self.max_line_bytes:
                # Still returned (empty) so the checkpoint moves past it.
                self.oversized_lines += 1
                self._discarding = False
                lines.append(Line(b"", self._inode, offset))
            else:
                lines.append(Line(piece, self._inode, offset))
        if len(self._partial) > self.max_line_bytes:
            self._discarding, self._partial = True, b""
        return lines

    def read_lines(self) -> list[Line]:
        """The next complete lines (all from one file, at most about a chunk), or [] when none are ready."""
        if self._file is None and not self._open():
            return []
        assert self._file is not None
        while True:
            chunk = self._file.read(CHUNK_BYTES)
            if not chunk:
                if self._switched():
                    continue
                return []
            self._rotation_seen = None
            self._pos += len(chunk)
            lines = self._split(chunk)
            if lines:
                return lines

    def position(self) -> Checkpoint | None:
        """(inode, offset) of the open file just past what has been read, if a file is open."""
        return Checkpoint(self._inode, self._pos - len(self._partial)) if self._file is not None else None
