"""Gateway request ids: random UUID4 text from uuid_utils, no system call per id, never shared with a fork."""

from __future__ import annotations

import os
import re
import uuid
import warnings

import pytest
import uuid_utils

from dynaseal.policy import request_ids

UUID4_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def test_an_id_is_uuid4_text_as_uuid_prints_it() -> None:
    for _ in range(1000):
        text = request_ids.new_request_id()
        assert UUID4_TEXT.fullmatch(text), text
        parsed = uuid.UUID(text)
        assert (str(parsed), parsed.version, parsed.variant) == (text, 4, uuid.RFC_4122)


def test_ids_are_distinct() -> None:
    ids = {request_ids.new_request_id() for _ in range(5000)}
    assert len(ids) == 5000


def test_no_getrandom_per_id(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    urandom = os.urandom

    def counting_urandom(size: int) -> bytes:
        calls.append(size)
        return urandom(size)

    monkeypatch.setattr(os, "urandom", counting_urandom)  # uuid.uuid4() called it once per id
    for _ in range(256):
        request_ids.new_request_id()
    assert calls == []


def test_the_id_comes_from_uuid_utils(monkeypatch: pytest.MonkeyPatch) -> None:
    fixed = uuid.UUID("12345678-1234-4234-8234-123456789abc")
    monkeypatch.setattr(uuid_utils, "uuid4", lambda: fixed)
    assert request_ids.new_request_id() == str(fixed)


def test_a_forked_child_does_not_mint_its_parents_next_ids() -> None:
    request_ids.new_request_id()  # the parent's generator is seeded and in use
    read, write = os.pipe()
    with warnings.catch_warnings():  # 3.12+ warns about fork in a threaded process; the child only writes
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, "".join(request_ids.new_request_id() for _ in range(4)).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 4 * 36).decode()
    os.close(read)
    os.waitpid(pid, 0)
    parent = "".join(request_ids.new_request_id() for _ in range(4))
    assert len(child) == 4 * 36 and child != parent
