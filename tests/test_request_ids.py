"""Gateway request ids: random UUID4 text, one getrandom per pool of ids, never shared with a fork."""

from __future__ import annotations

import os
import re
import uuid
import warnings

import pytest

from dynaseal.policy import request_ids

UUID4_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def test_an_id_is_uuid4_text_as_uuid_prints_it() -> None:
    for _ in range(1000):
        text = request_ids.new_request_id()
        assert UUID4_TEXT.fullmatch(text), text
        parsed = uuid.UUID(text)
        assert (str(parsed), parsed.version, parsed.variant) == (text, 4, uuid.RFC_4122)


def test_ids_are_distinct_across_pool_refills() -> None:
    ids = {request_ids.new_request_id() for _ in range(5 * request_ids._POOL_IDS + 7)}
    assert len(ids) == 5 * request_ids._POOL_IDS + 7


def test_one_getrandom_per_pool_not_per_id(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    urandom = os.urandom

    def counting_urandom(size: int) -> bytes:
        calls.append(size)
        return urandom(size)

    monkeypatch.setattr(os, "urandom", counting_urandom)  # uuid.uuid4() called it once per id
    request_ids._POOL.reset()
    for _ in range(request_ids._POOL_IDS):
        request_ids.new_request_id()
    assert len(calls) == 1


def test_a_forked_child_does_not_mint_its_parents_next_ids() -> None:
    request_ids._POOL.reset()
    request_ids.new_request_id()  # the parent holds a pool with 255 ids to go
    read, write = os.pipe()
    with warnings.catch_warnings():  # 3.12+ warns about fork in a threaded process; the child only writes
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, request_ids.new_request_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert child != request_ids.new_request_id()
