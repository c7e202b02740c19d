"""Read complete lines from Envoy's access log as it grows, across rotation (any mode) and truncation.

Rules that keep every line:
- A position is found again by content (inode and fingerprints, `checkpoint.Checkpoint.matches`), in
  the log or in a rotated sibling (`access.log.1`, `access.log.<timestamp>`, …). If no file holds it
  any more, every file written since the position was taken is read from its start.
- After a rotation the old file is drained to its end and kept open until the writer has clearly
  moved on: a newer file has data and the old one has been quiet for ROTATION_GRACE_S. Only then is
  the next file followed. That covers rename + reopen, logrotate's `create` (the new file exists
  long before Envoy reopens) and `copytruncate` (same inode, shorter or rewritten: start over).
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from log_shipper.checkpoint import HEAD_BYTES, Checkpoint, position

log = logging.getLogger("log_shipper")
CHUNK_BYTES = 256 * 1024
# How long the old file must stay quiet, with a newer file already written, before it is closed.
ROTATION_GRACE_S = 1.0
COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip")
# mtime is compared with times taken by this process: allow for coarse file-system clocks.
MTIME_SLACK_S = 2.0


@dataclass(frozen=True, slots=True)
class Line:
    """One complete line; `end` is the offset just past its newline in the file with `inode`."""

    data: bytes
    inode: int
    end: int


def log_files(path: Path) -> list[Path]:
    """The log and its uncompressed rotated siblings that exist, the log first."""
    siblings = sorted(p for p in path.parent.glob(path.name + ".*") if not p.name.endswith(COMPRESSED))
    return [p for p in [path, *siblings] if p.is_file()]


def find(start: Checkpoint, files: list[Path]) -> tuple[Path, BinaryIO] | None:
    """The file (opened) that still holds the content of `start`: same inode first, else same fingerprints."""
    opened: list[tuple[Path, BinaryIO]] = []
    try:
        for candidate in files:
            try:
                opened.append((candidate, candidate.open("rb")))
            except OSError:
                continue
        by_inode = [(p, h) for p, h in opened if os.fstat(h.fileno()).st_ino == start.inode]
        # A start-of-file position (no bytes to compare) is only its inode.
        by_content = opened if start.head is not None and start.head_len > 0 else []
        for candidate, handle in by_inode + by_content:
            if start.matches(handle.fileno()):
                opened.remove((candidate, handle))
                return candidate, handle
        return None
    finally:
        for _, handle in opened:
            handle.close()


def written_since(files: list[Path], since: float) -> list[Path]:
    """The files modified at or after wall time `since`, oldest first."""
    dated = []
    for candidate in files:
        try:
            mtime = candidate.stat().st_mtime
        except OSError:
            continue
        if mtime >= since - MTIME_SLACK_S:
            dated.append((mtime, candidate))
    return [p for _, p in sorted(dated)]


class LogTailer:
    """Yields complete lines in file order; `seek` goes back to a checkpoint (after a failed send)."""

    def __init__(self, path: Path, start: Checkpoint | None, max_line_bytes: int = 1 << 20,
                 written_after: float = 0.0) -> None:
        self.path = path
        self.max_line_bytes = max_line_bytes
        self.oversized_lines = 0
        self.restarts: Counter[str] = Counter()  # why reading started over at a file's start
        self._start, self._written_after = start, written_after
        self._file: BinaryIO | None = None
        self._inode = 0
        self._pos = 0  # offset just past the bytes read from _file
        self._partial = b""  # an incomplete last line (Envoy is mid-write)
        self._discarding = False  # inside a line longer than max_line_bytes
        self._grew_at = 0.0
        self._head = b""  # the file's first bytes as read: a change means it was rewritten in place
        # Files read to their end and left, by inode, with their first bytes (an inode can be reused).
        self._retired: dict[int, bytes] = {}

    @property
    def inode(self) -> int | None:
        """Inode of the file being read, if one is open."""
        return self._inode if self._file is not None else None

    def seek(self, checkpoint: Checkpoint | None, written_after: float = 0.0) -> None:
        """Continue just after `checkpoint` (the start of the current file when None).

        `written_after`: when the checkpoint was taken; if its content is gone, the files written since
        are read from their start.
        """
        self.close()
        self._start, self._written_after = checkpoint, written_after
        self._retired.clear()  # going back: the files after the checkpoint are read again in order

    def close(self) -> None:
        """Close the open file, if any."""
        if self._file is not None:
            self._file.close()
        self._file, self._partial, self._discarding = None, b"", False

    def _use(self, handle: BinaryIO, offset: int) -> None:
        if self._file is not None and self._file is not handle:
            self._retired[self._inode] = self._head
            self._file.close()
        handle.seek(offset)
        self._file, self._inode, self._pos = handle, os.fstat(handle.fileno()).st_ino, offset
        self._partial, self._discarding, self._grew_at = b"", False, time.monotonic()
        self._head = os.pread(handle.fileno(), min(HEAD_BYTES, offset), 0)

    def _open(self) -> bool:
        start = self._start
        files = log_files(self.path)
        if not files:
            return False  # not written yet: keep `start` for when it is
        self._start = None
        if start is not None:
            found = find(start, files)
            if found is not None:
                self._use(found[1], start.offset)
                return True
            # Truncated, or rotated away and deleted: whatever was written since may be unshipped.
            self.restarts["checkpoint_lost"] += 1
            first = (written_since(files, self._written_after) or [self.path if self.path in files else files[0]])[0]
            log.warning("checkpointed content is gone; reading again from the start",
                        extra={"checkpoint": str(start), "file": str(first)})
        else:
            first = self.path if self.path in files else files[0]
        try:
            self._use(first.open("rb"), 0)
        except OSError:
            self._start = start
            return False
        return True

    def _rewritten(self) -> bool:
        """Same inode, but truncated (shorter than read) or rewritten (first bytes differ).

        Checked before every read (an fstat and a pread of at most HEAD_BYTES): a file truncated and
        regrown between two polls must not be read on from the old offset, mid-way through a new line.
        """
        assert self._file is not None
        fd = self._file.fileno()
        if os.fstat(fd).st_size < self._pos:
            return True
        return bool(self._head) and os.pread(fd, len(self._head), 0) != self._head

    def _restart_if_rewritten(self) -> bool:
        if not self._rewritten():
            return False
        self.restarts["truncated"] += 1
        log.warning("access log truncated; reading it from the start", extra={"file": str(self.path)})
        assert self._file is not None
        self._use(self._file, 0)
        return True

    def _next_file(self) -> Path | None:
        """The file the writer moved on to: not one already left, with data, written no earlier than this one.

        The live log is always the last file: once on it, only a truncation moves the reader (back to
        its start). Equal mtimes (coarse clocks) are ordered by name, the live log last.
        """
        assert self._file is not None
        try:
            if os.stat(self.path).st_ino == self._inode:
                return None
        except FileNotFoundError:
            pass
        current_mtime = os.fstat(self._file.fileno()).st_mtime
        newer = []
        for candidate in log_files(self.path):
            try:
                st = candidate.stat()
            except OSError:
                continue
            if st.st_ino != self._inode and st.st_size > 0 and st.st_mtime >= current_mtime \
                    and not self._was_retired(candidate, st.st_ino):
                newer.append((st.st_mtime, candidate == self.path, candidate.name, candidate))
        return min(newer)[3] if newer else None

    def _was_retired(self, candidate: Path, inode: int) -> bool:
        """Whether this is a file already left behind (mtimes can tie: never go back to one)."""
        head = self._retired.get(inode)
        if not head:
            return False
        try:
            with candidate.open("rb") as handle:
                return os.pread(handle.fileno(), len(head), 0) == head
        except OSError:
            return True

    def _switched(self) -> bool:
        """At end of file: start over after truncation, or move on once the writer has."""
        if self._restart_if_rewritten():
            return True
        if time.monotonic() - self._grew_at < ROTATION_GRACE_S:
            return False
        following = self._next_file()
        if following is None:
            return False
        try:
            handle = following.open("rb")
        except OSError:
            return False
        self._use(handle, 0)
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
        self._restart_if_rewritten()
        while True:
            chunk = self._file.read(CHUNK_BYTES)
            if not chunk:
                if self._switched():
                    continue
                return []
            self._grew_at = time.monotonic()
            self._pos += len(chunk)
            if len(self._head) < HEAD_BYTES:
                self._head = os.pread(self._file.fileno(), min(HEAD_BYTES, self._pos), 0)
            lines = self._split(chunk)
            if lines:
                return lines

    def checkpoint_at(self, line: Line) -> Checkpoint:
        """The fingerprinted position just past `line` (read from the open file)."""
        if self._file is not None and line.inode == self._inode:
            return position(self._file.fileno(), line.end)
        return Checkpoint(line.inode, line.end)

    def position(self) -> Checkpoint | None:
        """(inode, offset) of the open file just past what has been read, if a file is open."""
        return Checkpoint(self._inode, self._pos - len(self._partial)) if self._file is not None else None
