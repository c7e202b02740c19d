"""The one redaction helper: every log line and every event that leaves a process goes through it.

Two kinds of thing are removed: the secret values this process resolved from its environment
(provider keys, webhook secrets, the session secret, HS256 tenant secrets: remembered by the
runtime as it resolves them), and anything shaped like a credential (JWTs, bearer tokens,
`sk-` keys, `whsec_` secrets), so a mistake elsewhere cannot leak a key into the logs.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable

import orjson
from pydantic import SecretStr

# A remembered value shorter than this is not redacted: it would blank ordinary words in every line
# (no secret that short protects anything; the config checks enforce real lengths where they matter).
MIN_SECRET_CHARS = 6
SECRET_MARK = "[redacted-secret]"

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), "[redacted-jwt]"),
    (re.compile(r"(?i)(bearer\s+)[^\s\"',;]+"), r"\1[redacted]"),
    (re.compile(r"whsec_[A-Za-z0-9+/=]+"), "whsec_[redacted]"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{6,}"), "sk-[redacted]"),
)
# The same shapes over bytes, masked in place: a binary payload (a protobuf event) keeps its framing.
_BYTE_PATTERNS = tuple(re.compile(p.pattern.encode(), p.flags & ~re.UNICODE) for p, _ in _PATTERNS)


def _mask(match: re.Match[bytes]) -> bytes:
    kept = match.group(1) if match.re.groups else b""
    return kept + b"*" * (len(match.group(0)) - len(kept))


class Redactor:
    """Known secret values plus credential patterns; safe to share between threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: set[str] = set()
        self._text: re.Pattern[str] | None = None
        self._bytes: re.Pattern[bytes] | None = None

    def remember(self, *secrets: str | SecretStr | None) -> None:
        """Add secret values to redact from now on (None and too-short values are ignored)."""
        plain = [s.get_secret_value() if isinstance(s, SecretStr) else s for s in secrets]
        fresh = {v for v in plain if v and len(v) >= MIN_SECRET_CHARS} - self._values
        if not fresh:
            return
        with self._lock:
            self._values |= fresh
            # Inside a JSON log line a value appears escaped: redact that spelling too.
            spellings = self._values | {orjson.dumps(v).decode()[1:-1] for v in self._values}
            ordered = sorted(spellings, key=len, reverse=True)  # longest first: no partial leftovers
            self._text = re.compile("|".join(re.escape(s) for s in ordered))
            self._bytes = re.compile(b"|".join(re.escape(s.encode()) for s in ordered))

    def forget_all(self) -> None:
        """Drop every remembered value (tests)."""
        with self._lock:
            self._values.clear()
            self._text = self._bytes = None

    @property
    def known(self) -> int:
        """How many secret values are remembered."""
        return len(self._values)

    def redact(self, text: str) -> str:
        """`text` without any remembered secret value or credential-shaped string."""
        known = self._text
        if known is not None:
            text = known.sub(SECRET_MARK, text)
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
        return text

    def redact_bytes(self, data: bytes) -> bytes:
        """`data` with every secret and credential masked by `*` of the same length (framing kept)."""
        known = self._bytes
        if known is not None:
            data = known.sub(lambda m: b"*" * len(m.group(0)), data)
        for pattern in _BYTE_PATTERNS:
            data = pattern.sub(_mask, data)
        return data


# The process's redactor: the runtime remembers into it, the log formatter and the DLQ read from it.
REDACTOR = Redactor()


def remember_secrets(secrets: Iterable[str | SecretStr | None]) -> None:
    """Remember resolved secret values in the process's redactor."""
    REDACTOR.remember(*secrets)


def redact(text: str) -> str:
    """Redact with the process's redactor."""
    return REDACTOR.redact(text)


def redact_bytes(data: bytes) -> bytes:
    """Redact bytes in place (same length) with the process's redactor."""
    return REDACTOR.redact_bytes(data)
