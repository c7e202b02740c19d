"""Gateway request ids: UUID4 text, drawn from a pool of random bytes.

Every Check mints one (the billing id: the usage event's request_id, the callback's webhook-id).
`uuid.uuid4()` asks the kernel for 16 random bytes each time (a getrandom system call) and builds a
UUID object to print it; here one call fills a pool for 256 ids and the text is formatted directly.
The bytes are the same CSPRNG's, so the ids stay unguessable. A forked child starts a pool of its own.
"""

from __future__ import annotations

import os
import threading

_ID_BYTES = 16
_POOL_IDS = 256
# Version 4 and the RFC 4122 variant, as uuid.uuid4() sets them.
_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_SET = (0x4000 << 64) | (0x8000 << 48)


class _Pool:
    """Random bytes for the next ids and where the next one starts."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget the pool (a forked child must not mint its parent's next ids)."""
        self.data = b""
        self.at = 0

    def take(self) -> bytes:
        """The next 16 random bytes."""
        with self.lock:
            if self.at >= len(self.data):
                self.data = os.urandom(_ID_BYTES * _POOL_IDS)
                self.at = 0
            at = self.at
            self.at = at + _ID_BYTES
        return self.data[at:at + _ID_BYTES]


_POOL = _Pool()
os.register_at_fork(after_in_child=_POOL.reset)


def new_request_id() -> str:
    """A fresh gateway request id: a random UUID4 as text (ASCII, 36 characters)."""
    value = int.from_bytes(_POOL.take(), "big") & _CLEAR | _SET
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
