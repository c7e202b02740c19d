"""A minimal pipelined Redis client (authz's hot path, the consumer's loop): one connection, replies in order.

Every in-flight Check shares one connection: commands issued in the same event-loop turn go out
in one write, and Redis answers in order (RESP guarantees it), so a Check costs a few
microseconds of Python instead of a pool checkout, a socket of its own and redis-py's layers.
It speaks RESP2 over plain TCP with optional AUTH and SELECT; anything else (TLS, unix sockets)
stays with redis-py (`redis_async.connect` decides). A Redis Cluster gets one of these per master
(`redis_cluster.PipelinedCluster`). Failures raise redis-py's own
exception types, so callers handle both clients alike (fail closed on `RedisError`).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, cast
from urllib.parse import unquote, urlsplit

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

_CRLF = b"\r\n"
# Replies of a server that is no longer the master (see PipelinedRedis.execute).
_NO_LONGER_MASTER = ("READONLY", "MASTERDOWN")


def _no_longer_master(message: str) -> bool:
    """READONLY or MASTERDOWN, as a command's reply or inside a script's error (older Redis wraps it)."""
    return message.startswith(_NO_LONGER_MASTER) or any(f"-{kind} " in message for kind in _NO_LONGER_MASTER)


class _Incomplete(Exception):
    """The buffer ends inside a reply."""


def encode(args: tuple[Any, ...]) -> bytes:
    """One command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def parse(buf: bytes | bytearray, pos: int) -> tuple[Any, int]:
    """One RESP2 reply starting at `pos`: (value, next position); errors come back as ResponseError."""
    end = buf.find(_CRLF, pos)
    if end < 0:
        raise _Incomplete
    kind, line = buf[pos:pos + 1], bytes(buf[pos + 1:end])
    pos = end + 2
    if kind == b":":
        return int(line), pos
    if kind == b"+":
        return line, pos
    if kind == b"-":
        return ResponseError(line.decode(errors="replace")), pos
    if kind == b"$":
        return _bulk_string(buf, int(line), pos)
    if kind == b"*":
        return _array(buf, int(line), pos)
    raise RedisConnectionError(f"unexpected RESP reply type {kind!r}")


def _bulk_string(buf: bytes | bytearray, size: int, pos: int) -> tuple[bytes | None, int]:
    """A bulk string of `size` bytes at `pos` (-1: nil)."""
    if size < 0:
        return None, pos
    if len(buf) < pos + size + 2:
        raise _Incomplete
    return bytes(buf[pos:pos + size]), pos + size + 2


def _array(buf: bytes | bytearray, count: int, pos: int) -> tuple[list[Any] | None, int]:
    """An array of `count` replies starting at `pos` (-1: nil)."""
    if count < 0:
        return None, pos
    items = []
    for _ in range(count):
        item, pos = parse(buf, pos)
        items.append(item)
    return items, pos


class _Connection(asyncio.Protocol):
    """One TCP connection: writes batched per loop turn, replies handed to waiters in order.

    Every command has the same deadline, and Redis answers in order, so the oldest waiter always
    has the earliest deadline: one timer per connection, re-armed for the next oldest, stands in
    for a timer per command (an allocation, a libuv timer start and a cancel on every Check).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float = 0.05) -> None:
        self.loop = loop
        self.timeout_s = timeout_s
        self.transport: asyncio.Transport | None = None
        # (reply future, time sent on the loop's clock), oldest first
        self.waiters: deque[tuple[asyncio.Future[Any], float]] = deque()
        self.buffer = bytearray()
        self.outgoing: list[bytes] = []
        self.closed = False
        self.last_read = loop.time()
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport (uvloop's is not an asyncio.Transport subclass, but behaves as one)."""
        self.transport = cast(asyncio.Transport, transport)

    def send(self, command: bytes) -> asyncio.Future[Any]:
        """Queue a command; the future gets its reply, its deadline's RedisTimeoutError, or the
        connection's failure."""
        if self.closed:
            raise RedisConnectionError("redis connection is closed")
        loop = self.loop
        if not self.waiters and self.transport is not None:
            # Nothing in flight: write now, so Redis works on it while this turn goes on. Commands
            # sent later in the same turn are batched into one write at its end.
            self.transport.write(command)
        else:
            if not self.outgoing:
                loop.call_soon(self._flush)
            self.outgoing.append(command)
        waiter = loop.create_future()
        now = loop.time()
        self.waiters.append((waiter, now))
        if self._timer is None:
            self._timer = loop.call_at(now + self.timeout_s, self._expire)
        return waiter

    def _flush(self) -> None:
        if self.outgoing and self.transport is not None and not self.closed:
            self.transport.write(b"".join(self.outgoing))
        self.outgoing.clear()

    def _expire(self) -> None:
        """Fail every waiter past its deadline; a connection silent since the oldest was sent is dead."""
        self._timer = None
        if self.closed:
            return
        limit = self.loop.time() - self.timeout_s
        for waiter, sent in self.waiters:
            if sent > limit:  # the first one still in time: wake up again at its deadline
                self._timer = self.loop.call_at(sent + self.timeout_s, self._expire)
                return
            if not waiter.done():
                waiter.set_exception(RedisTimeoutError(f"redis did not answer within {self.timeout_s * 1000:.0f} ms"))
                if self.last_read < sent:  # nothing at all came back since: treat the connection as dead
                    self.abort(RedisConnectionError("redis connection timed out"))
                    return

    def data_received(self, data: bytes) -> None:
        """Hand every complete reply to the oldest waiter (timed-out waiters just drop theirs)."""
        self.last_read = self.loop.time()
        buf: bytes | bytearray = data
        if self.buffer:
            self.buffer += data
            buf = self.buffer
        pos = 0
        try:
            while pos < len(buf):
                reply, pos = parse(buf, pos)
                waiter = self.waiters.popleft()[0]
                if not waiter.done():
                    if isinstance(reply, ResponseError):
                        waiter.set_exception(reply)
                    else:
                        waiter.set_result(reply)
        except _Incomplete:
            pass
        except (IndexError, ValueError, RedisConnectionError) as exc:  # a reply nobody asked for: resync
            self.abort(RedisConnectionError(f"redis protocol error: {exc}"))
            return
        self.buffer = bytearray(buf[pos:]) if pos < len(buf) else bytearray()

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail everything still waiting."""
        self.abort(RedisConnectionError(f"redis connection lost: {exc or 'closed by server'}"))

    def abort(self, error: Exception) -> None:
        """Close and fail every waiter with `error` (idempotent)."""
        already = self.closed
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self.waiters:
            waiter = self.waiters.popleft()[0]
            if not waiter.done():
                waiter.set_exception(error)
        if self.transport is not None and not already:
            self.transport.abort()


class PipelinedRedis:
    """A lazily connected, self-reconnecting pipelined client with a per-command deadline."""

    def __init__(self, host: str, port: int, *, db: int = 0, username: str | None = None,
                 password: str | None = None, timeout_s: float = 0.05) -> None:
        self.host, self.port, self.db = host, port, db
        self.username, self.password = username, password
        self.timeout_s = timeout_s
        self._connection: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None
        self._scripts: dict[str, str] = {}

    @classmethod
    def from_url(cls, url: str, timeout_s: float) -> PipelinedRedis | None:
        """A client for a plain `redis://host:port/db` URL (user and password allowed), else None."""
        parts = urlsplit(url)
        if parts.scheme != "redis" or not parts.hostname or parts.query:
            return None
        path = parts.path.strip("/")
        if path and not path.isdigit():
            return None
        return cls(parts.hostname, parts.port or 6379, db=int(path or 0),
                   username=unquote(parts.username) if parts.username else None,
                   password=unquote(parts.password) if parts.password else None, timeout_s=timeout_s)

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(loop, self.timeout_s), self.host, self.port),
                self.timeout_s)
        except (OSError, TimeoutError) as exc:
            raise RedisConnectionError(f"cannot connect to redis at {self.host}:{self.port}: {exc}") from None
        setup = []
        if self.password is not None:
            auth = ("AUTH", self.username, self.password) if self.username else ("AUTH", self.password)
            setup.append(connection.send(encode(auth)))
        if self.db:
            setup.append(connection.send(encode(("SELECT", self.db))))
        try:
            for waiter in setup:
                await asyncio.wait_for(waiter, self.timeout_s)
        except (TimeoutError, ResponseError) as exc:
            connection.abort(RedisConnectionError("redis connection setup failed"))
            raise RedisConnectionError(f"redis AUTH/SELECT failed: {exc}") from None
        return connection

    async def _ready(self) -> _Connection:
        connection = self._connection
        if connection is not None and not connection.closed:
            return connection
        if self._connecting is None:  # one connect attempt shared by every caller that needs it
            self._connecting = asyncio.ensure_future(self._connect())
        connecting = self._connecting
        try:
            connection = await asyncio.shield(connecting)
        finally:
            if self._connecting is connecting and connecting.done():
                self._connecting = None
        self._connection = connection
        return connection

    async def execute(self, *args: Any) -> Any:
        """Run one command; raise RedisError subclasses on failure or after the deadline."""
        connection = self._connection
        if connection is None or connection.closed:
            connection = await self._ready()
        try:
            return await connection.send(encode(args))
        except ResponseError as exc:
            if _no_longer_master(str(exc)):
                # A failover demoted this server under our connection (a DNS name or floating address now
                # names another): connect again, rather than fail every write on this connection for good.
                connection.abort(RedisConnectionError("redis is no longer a master"))
            raise

    async def execute_asking(self, *args: Any) -> Any:
        """ASKING, then the command, back to back on one connection (a Redis Cluster ASK redirection)."""
        connection = await self._ready()
        # Both go out in the same write, in order: the node accepts the command for an importing slot.
        asking = connection.send(encode(("ASKING",)))
        waiter = connection.send(encode(args))  # the connection's deadline timer covers it, as every command
        # ASKING's own reply (+OK) is not needed: if it failed, the command is answered MOVED instead.
        asking.add_done_callback(lambda done: done.cancelled() or done.exception())
        return await waiter

    async def eval_script(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA, or EVAL (which also caches the script) when Redis does not know it: one round trip."""
        sha = self._scripts.get(script)
        if sha is None:
            sha = self._scripts[script] = hashlib.sha1(script.encode()).hexdigest()
        try:
            return await self.execute("EVALSHA", sha, len(keys), *keys, *args)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self.execute("EVAL", script, len(keys), *keys, *args)

    async def ping(self) -> bool:
        """PING answered with PONG."""
        return bool(await self.execute("PING") == b"PONG")

    async def execute_on(self, key: str, *args: Any) -> Any:
        """One command touching `key` (a single server holds every key: the same as `execute`)."""
        return await self.execute(*args)

    async def on_every_master(self, *args: Any) -> list[Any]:
        """One command on this server (its only master), as a list of one reply."""
        return [await self.execute(*args)]

    async def scan_iter(self, pattern: str, count: int = 1000) -> AsyncIterator[str]:
        """Every key name matching `pattern`, by SCAN cursor (a name may come twice, as SCAN allows)."""
        cursor = b"0"
        while True:
            cursor, names = await self.execute("SCAN", cursor, "MATCH", pattern, "COUNT", count)
            for name in names:
                yield name.decode()
            if cursor == b"0":
                return

    async def aclose(self) -> None:
        """Close the connection (a later command reconnects)."""
        if self._connection is not None:
            self._connection.abort(RedisConnectionError("client closed"))
            self._connection = None
        connecting, self._connecting = self._connecting, None
        if connecting is not None and not connecting.done():
            # A connect under way would otherwise outlive the close: its connection is closed as it arrives
            # (before its waiting commands resume: they fail as on a closed client).
            connecting.add_done_callback(_abort_late_connection)


def _abort_late_connection(connecting: asyncio.Future[_Connection]) -> None:
    if not connecting.cancelled() and connecting.exception() is None:
        connecting.result().abort(RedisConnectionError("client closed"))
