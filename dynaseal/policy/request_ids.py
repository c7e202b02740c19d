"""Gateway request ids: a random UUID4 as text, from `uuid_utils`.

Every Check mints one (the billing id: the usage event's request_id, the callback's webhook-id).
`uuid_utils.uuid4()` draws from the Rust `uuid` crate's thread-local CSPRNG (ChaCha, seeded from the
operating system), so the ids stay unguessable, and reseeds it in a forked child, so a child never mints
its parent's next ids. It replaced a pool of `os.urandom` bytes formatted by hand: 0.2 µs an id against
the pool's 1.4–2.0 and `uuid.uuid4()`'s 2.5–3.2 (bench/RESULTS.md, `python -m bench.hand_written_ab`).
"""

from __future__ import annotations

import uuid_utils


def new_request_id() -> str:
    """A fresh gateway request id: a random UUID4 as text (ASCII, 36 characters)."""
    return str(uuid_utils.uuid4())
