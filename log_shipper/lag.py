"""How far the acknowledged checkpoint is behind the end of the access log, in bytes and in lines."""

from __future__ import annotations

import os
from pathlib import Path

from log_shipper.checkpoint import Checkpoint

# Counting newlines reads the unshipped tail; past this much, extrapolate from the average line.
MAX_SCAN_BYTES = 16 << 20


def lag(path: Path, acked: Checkpoint | None) -> tuple[int, int]:
    """(bytes, lines) in the current log after `acked` (the whole file if `acked` is in another file)."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return 0, 0
    with handle:
        st = os.fstat(handle.fileno())
        start = acked.offset if acked is not None and acked.inode == st.st_ino and acked.offset <= st.st_size else 0
        behind = st.st_size - start
        if behind <= 0:
            return 0, 0
        handle.seek(start)
        scanned = handle.read(min(behind, MAX_SCAN_BYTES))
        lines = scanned.count(b"\n")
        if behind > len(scanned) and lines:
            lines = int(lines * behind / len(scanned))
        return behind, lines
