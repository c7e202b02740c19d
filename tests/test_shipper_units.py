"""The shipper's pieces without processes: fingerprinted checkpoints, rotation in every mode, lag, retention."""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from log_shipper import checkpoint
from log_shipper.checkpoint import Checkpoint, State
from log_shipper.lag import lag
from log_shipper.retention import Retention
from log_shipper.rotation import Rotator, rotated_name
from log_shipper.tailer import Line, LogTailer


def _lines(tailer: LogTailer, quiet_s: float = 0.6, limit_s: float = 5.0) -> list[bytes]:
    """Everything the tailer gives until it has been idle for `quiet_s` (longer than the rotation grace)."""
    out: list[bytes] = []
    start = last = time.monotonic()
    while time.monotonic() - last < quiet_s and time.monotonic() - start < limit_s:
        got = tailer.read_lines()
        out.extend(line.data for line in got)
        if got:
            last = time.monotonic()
        time.sleep(0.02)
    return out


def _read_all(tailer: LogTailer) -> list[Line]:
    lines: list[Line] = []
    while batch := tailer.read_lines():
        lines.extend(batch)
    return lines


def _line(i: int, prefix: str = "r") -> bytes:
    ts = (datetime.now(UTC) - timedelta(seconds=30)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return json.dumps({"ts": ts, "request_id": f"{prefix}-{i}", "pad": "x" * 40}).encode() + b"\n"


def _write(path: Path, *lines: bytes, mode: str = "ab") -> None:
    with path.open(mode) as handle:
        handle.write(b"".join(lines))


def test_truncated_while_stopped_and_regrown_past_the_offset_is_read_from_the_start(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    _write(log, *(_line(i, "old") for i in range(3)))
    first = LogTailer(log, None)
    lines = _read_all(first)
    saved = first.checkpoint_at(lines[-1])
    first.close()
    # Truncated while the shipper is down, then grown past the saved offset.
    _write(log, *(_line(i, "new") for i in range(6)), mode="wb")
    assert log.stat().st_size > saved.offset and log.stat().st_ino == saved.inode
    resumed = LogTailer(log, saved, written_after=time.time() - 5)
    got = [json.loads(data)["request_id"] for data in _lines(resumed)]
    assert got == [f"new-{i}" for i in range(6)]
    assert resumed.restarts["checkpoint_lost"] == 1


def test_an_old_format_checkpoint_still_resumes(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.json"
    path.write_text(json.dumps({"inode": 5, "offset": 9}))
    state = checkpoint.load(path)
    assert state.acked == Checkpoint(5, 9) == state.consumed and state.marks == []


@pytest.mark.parametrize("mode", ["rename", "copytruncate"])
def test_rotated_while_stopped_resumes_in_the_rotated_file_then_the_new_one(tmp_path: Path, mode: str,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("log_shipper.tailer.ROTATION_GRACE_S", 0.1)
    log = tmp_path / "access.log"
    _write(log, _line(0), _line(1))
    first = LogTailer(log, None)
    saved = first.checkpoint_at(first.read_lines()[0])
    first.close()
    _write(log, _line(2))
    if mode == "rename":
        log.rename(tmp_path / "access.log.1")
    else:
        shutil.copy(log, tmp_path / "access.log.1")
        log.write_bytes(b"")
    time.sleep(0.02)
    _write(log, _line(3), _line(4))
    resumed = LogTailer(log, saved, written_after=time.time() - 5)
    got = [json.loads(data)["request_id"] for data in _lines(resumed)]
    assert got == ["r-1", "r-2", "r-3", "r-4"]


def test_create_mode_rotation_drains_the_old_file_until_the_writer_moves(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("log_shipper.tailer.ROTATION_GRACE_S", 0.2)
    log = tmp_path / "access.log"
    writer = log.open("ab", buffering=0)  # Envoy's fd: it keeps writing here until it reopens
    writer.write(_line(0))
    tailer = LogTailer(log, None)
    assert [json.loads(d)["request_id"] for d in _lines(tailer)] == ["r-0"]
    log.rename(tmp_path / "access.log.1")
    log.write_bytes(b"")  # logrotate `create`: the new file exists before Envoy reopens
    time.sleep(0.5)  # longer than the grace: the old file is quiet, the new one empty
    assert tailer.read_lines() == []
    writer.write(_line(1))  # still the old file
    time.sleep(0.5)
    writer.write(_line(2))
    writer.close()
    with log.open("ab") as reopened:  # Envoy reopened: new lines go to the new file
        reopened.write(_line(3))
    got = [json.loads(d)["request_id"] for d in _lines(tailer)]
    assert got == ["r-1", "r-2", "r-3"]


def test_a_failed_batch_goes_back_to_content_not_to_an_offset(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    _write(log, _line(0), _line(1))
    tailer = LogTailer(log, None)
    lines = _read_all(tailer)
    acked = tailer.checkpoint_at(lines[0])
    _write(log, *(_line(i, "new") for i in range(5)), mode="wb")  # truncated and regrown during the send
    tailer.seek(acked, written_after=time.time() - 5)
    assert [json.loads(d)["request_id"] for d in _lines(tailer)] == [f"new-{i}" for i in range(5)]


def test_a_file_rewritten_in_place_between_polls_is_read_from_the_start(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    _write(log, _line(0), _line(1))
    tailer = LogTailer(log, None)
    assert len(_read_all(tailer)) == 2
    _write(log, *(_line(i, "new") for i in range(4)), mode="wb")  # longer than what was read
    assert [json.loads(d)["request_id"] for d in _lines(tailer)] == [f"new-{i}" for i in range(4)]
    assert tailer.restarts["truncated"] == 1


def test_lag_counts_the_rotated_file_and_the_new_one_and_the_oldest_age(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    _write(log, _line(0), _line(1), _line(2))
    tailer = LogTailer(log, None)
    acked = tailer.checkpoint_at(tailer.read_lines()[0])
    log.rename(tmp_path / "access.log.1")
    time.sleep(0.02)
    _write(log, _line(3), _line(4))
    behind = lag(log, acked)
    assert behind.lines == 4 and behind.bytes == 4 * len(_line(0))
    assert 25 < behind.age_s < 120  # the lines' ts is 30 s ago
    everything = tailer.checkpoint_at(Line(b"", acked.inode, 3 * len(_line(0))))
    assert lag(tmp_path / "access.log.1", everything).lines == 0


def test_retention_forgets_only_what_the_group_committed_and_spots_offsets_going_back() -> None:
    retention = Retention(State(), "127.0.0.1:1", "g")
    retention.start_at(Checkpoint(1, 0))
    a, b = Checkpoint(1, 100), Checkpoint(1, 200)
    assert retention.acked(a, [(0, 5, "d5"), (1, 7, "d7")])
    retention._marked_at = 0.0  # the next batch gets a mark of its own
    assert retention.acked(b, [(0, 6, "d6")])
    assert len(retention.marks) == 2
    retention._committed = {0: 6, 1: 8}  # partition 0 committed up to 5 only
    assert retention.advance() and retention.consumed == a
    retention._committed = {0: 7, 1: 8}
    assert retention.advance() and retention.consumed == b and retention.marks == []
    assert not retention.acked(Checkpoint(1, 300), [(0, 0, "new")])  # offsets restarted: the broker lost them
    assert retention.reset()[0] == b


def test_retention_keeps_a_bounded_number_of_marks() -> None:
    retention = Retention(State(), "127.0.0.1:1", "g")
    for i in range(500):
        retention._marked_at = 0.0
        assert retention.acked(Checkpoint(1, i + 1), [(0, i, f"d{i}")])
    assert len(retention.marks) <= 64 and retention.marks[-1].at == Checkpoint(1, 500)
    retention._committed = {0: 500}
    retention.advance()
    assert retention.consumed == Checkpoint(1, 500)


def test_prune_deletes_only_rotated_files_before_the_consumed_one(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    now = datetime.now(UTC)
    older, newer = rotated_name(log, now - timedelta(minutes=2)), rotated_name(log, now - timedelta(minutes=1))
    for path in (older, newer, log):
        _write(path, _line(0, path.name))
    foreign = tmp_path / "access.log.1"  # not ours: never deleted
    _write(foreign, _line(0))
    rotator = Rotator(log, 100, "http://127.0.0.1:1")
    handle = newer.open("rb")
    in_newer = checkpoint.position(handle.fileno(), len(_line(0, newer.name)))
    handle.close()
    assert rotator.prune(in_newer, reading_inode=log.stat().st_ino) == [older]
    in_log = Checkpoint(log.stat().st_ino, 0)
    assert rotator.prune(in_log, reading_inode=newer.stat().st_ino) == []  # still being read
    assert rotator.prune(in_log, reading_inode=log.stat().st_ino) == [newer]
    assert foreign.exists() and log.exists()


def test_no_rotation_while_envoy_cannot_be_asked_to_reopen(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    _write(log, *(_line(i) for i in range(10)))
    rotator = Rotator(log, 100, "http://127.0.0.1:9")  # nothing listens there
    assert not rotator.maybe_rotate()
    assert [p.name for p in tmp_path.iterdir()] == ["access.log"]
    assert os.path.getsize(log) > 100
