"""Storing usage callbacks on one writer thread, as many per transaction as arrive together.

The gateway delivers callbacks concurrently; SQLite (and most databases) pay a sync per commit.
Callbacks queued while a commit is under way go into the next transaction together, and each
sender is answered only after the transaction holding its row committed (at-least-once stays
intact: a 2xx always means stored). A batch that fails is retried one row per transaction, so one
bad row never sinks its neighbours.

A row may name the request's real row (`unless_stored`: a reservation's row is not stored beside
it) or the reservation row it replaces (`replaces`). Both are decided in the row's own transaction
on this one thread, so a reservation callback and the real one racing each other still leave one
row, and the replacement costs no commit of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import Connection, Engine, Insert, Table, delete, exists, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from issuer_api.store import Callback

log = logging.getLogger("issuer_api.callbacks")

MAX_BATCH = 256
_ON_CONFLICT = ("sqlite", "postgresql")


class Outcome(StrEnum):
    """What storing one callback row did (the receiver's per-event status)."""

    STORED = "stored"
    DUPLICATE = "duplicate"  # its webhook-id was stored before
    SUPERSEDED = "superseded"  # a reservation's row whose request's real row is stored


@dataclass(frozen=True, slots=True)
class CallbackRow:
    """One callbacks-table row to insert, and the rows of the same request it depends on."""

    values: dict[str, Any]
    unless_stored: str | None = None  # skip the row if this webhook-id is stored
    replaces: str | None = None  # delete this webhook-id's row once this one is stored


_Item = tuple[CallbackRow, asyncio.Future[Outcome], asyncio.AbstractEventLoop]


def insert_once(dialect: str) -> Insert:
    """The INSERT (rows as parameters) that skips a webhook-id stored before, where the dialect can say so."""
    table = cast(Table, Callback.__table__)  # declarative tables are Tables; the stub says FromClause
    if dialect == _ON_CONFLICT[0]:
        return sqlite.insert(table).on_conflict_do_nothing(index_elements=["webhook_id"])
    if dialect == _ON_CONFLICT[1]:
        return postgresql.insert(table).on_conflict_do_nothing(index_elements=["webhook_id"])
    return insert(table)  # the unique index refuses a repeat: IntegrityError


def _settle(future: asyncio.Future[Outcome], outcome: Outcome | BaseException) -> None:
    if future.done():  # the request was cancelled meanwhile
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class CallbackWriter:
    """A thread that inserts callback rows in group commits; `write` awaits one row's outcome."""

    def __init__(self, engine: Engine, max_batch: int = MAX_BATCH) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self._dialect = engine.dialect.name
        # One statement for every row (its compiled form is cached); the row's values are its parameters.
        self._insert = insert_once(self._dialect)
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="callback-writer", daemon=True)
        self._thread.start()

    async def write(self, row: CallbackRow) -> Outcome:
        """Store one row (in the next group commit) and say what it did; raises if it cannot be stored."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        self._queue.put((row, future, loop))
        return await future

    async def store(self, values: dict[str, Any]) -> bool:
        """Insert one callback row; True if stored now, False if its webhook-id was stored before."""
        return await self.write(CallbackRow(values)) is Outcome.STORED

    def close(self) -> None:
        """Finish what is queued, then stop the thread."""
        self._queue.put(None)
        self._thread.join(10)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:  # close(): finish this batch, then stop
                    self._queue.put(None)
                    break
                batch.append(item)
            for (_row, future, loop), outcome in zip(batch, self._write(batch), strict=True):
                with contextlib.suppress(RuntimeError):  # that request's loop is gone: nobody waits
                    loop.call_soon_threadsafe(_settle, future, outcome)

    def _write(self, batch: list[_Item]) -> list[Outcome | BaseException]:
        try:
            with self.engine.begin() as connection:
                return [self._write_row(connection, row) for row, _future, _loop in batch]
        except Exception as exc:
            if len(batch) > 1:
                log.warning("callback batch failed; storing its rows one by one", extra={"rows": len(batch)})
                return [self._write([item])[0] for item in batch]
            if isinstance(exc, IntegrityError) and self._dialect not in _ON_CONFLICT:
                return [Outcome.DUPLICATE]  # a repeat, refused by the unique index
            return [exc]  # this row cannot be stored: its sender gets a 500 and retries

    def _write_row(self, connection: Connection, row: CallbackRow) -> Outcome:
        if row.unless_stored is not None and connection.execute(
                select(exists().where(Callback.webhook_id == row.unless_stored))).scalar():
            return Outcome.SUPERSEDED
        if not connection.execute(self._insert, row.values).rowcount:
            return Outcome.DUPLICATE
        if row.replaces is not None:
            connection.execute(delete(Callback).where(Callback.webhook_id == row.replaces))
        return Outcome.STORED
