"""How far the acknowledged checkpoint is behind the access log: bytes, lines, and the oldest line's age.

The unacknowledged part is the rest of the file holding the checkpoint plus every log file written
after it (a rotated file still being drained counts with the new one). The age is that of the
first unacknowledged line, from its `ts` (the request's start time, as Envoy logs it).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import orjson

from log_shipper.checkpoint import Checkpoint
from log_shipper.tailer import find, log_files

# Counting newlines reads the unshipped tail; past this much, extrapolate from the average line.
MAX_SCAN_BYTES = 16 << 20
FIRST_LINE_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Lag:
    """What the broker has not acknowledged yet."""

    bytes: int = 0
    lines: int = 0
    age_s: float = 0.0


def _line_ts(line: bytes) -> float | None:
    """The wall time in a line's `ts` field, if it has one."""
    try:
        ts = orjson.loads(line).get("ts")
        return datetime.fromisoformat(str(ts).replace("Z", "+00:00")).timestamp() if ts else None
    except (orjson.JSONDecodeError, ValueError, AttributeError):
        return None


def _scan(handle: BinaryIO, start: int, budget: int) -> tuple[int, int, bytes | None]:
    """(bytes, complete lines, first complete line) after `start`, reading at most `budget` bytes."""
    size = os.fstat(handle.fileno()).st_size
    behind = max(size - start, 0)
    if behind == 0:
        return 0, 0, None
    handle.seek(start)
    scanned = handle.read(min(behind, max(budget, FIRST_LINE_BYTES)))
    lines = scanned.count(b"\n")
    if behind > len(scanned) and lines:
        lines = int(lines * behind / len(scanned))
    first = scanned.split(b"\n", 1)[0] if b"\n" in scanned else None
    return behind, lines, first


def lag(path: Path, acked: Checkpoint | None, now: float | None = None) -> Lag:
    """The lag of `acked` behind the log at `path` and its rotated siblings (the whole log if `acked` is gone)."""
    files = log_files(path)
    found = find(acked, files) if acked is not None else None
    ranges: list[tuple[BinaryIO, int]] = []
    if found is not None:
        handle = found[1]
        ranges.append((handle, acked.offset if acked else 0))
        mtime = os.fstat(handle.fileno()).st_mtime
        ino = os.fstat(handle.fileno()).st_ino
        newer = []
        for candidate in files:
            try:
                st = candidate.stat()
            except OSError:
                continue
            if st.st_ino != ino and st.st_mtime >= mtime:
                newer.append((st.st_mtime, candidate))
        later = [c for _, c in sorted(newer)]
    else:
        later = [path] if path in files else []
    for candidate in later:
        try:
            ranges.append((candidate.open("rb"), 0))
        except OSError:
            continue
    total, lines, first = 0, 0, None
    budget = MAX_SCAN_BYTES
    try:
        for handle, start in ranges:
            b, n, line = _scan(handle, start, budget)
            budget = max(budget - b, 0)
            total, lines = total + b, lines + n
            first = first if first is not None else line
    finally:
        for handle, _ in ranges:
            handle.close()
    ts = _line_ts(first) if first else None
    age = max((now or time.time()) - ts, 0.0) if ts is not None else 0.0
    return Lag(total, lines, age)
